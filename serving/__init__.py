"""mlcloud serving: one BentoML service for every mlcloud model directory.

Modules (nothing heavy is imported here): ``loaders`` (model dir -> Predictor), ``inputs``
(request validation), ``contracts`` (local/SageMaker/Vertex/Azure ML container contracts),
``service`` (the ``@bentoml.service``), ``app`` (its JSON routes), ``guard`` (body limit, media
type, bounded metrics), ``batching`` (adaptive micro-batching), ``image`` (Bento and container
image build), ``entrypoint`` (the container's entrypoint). See serving/README.md.
"""
