"""The SageMaker provider in the shared endpoint conformance suite, against moto in server mode.

moto runs no serving containers, so ``settle_endpoint`` plays the container's part: it loads the
model the endpoint's config serves (the model.tar.gz the deploy uploaded to S3) with mlcloud's
own loader and queues its answer through moto's endpoint-results API (``serve_deployed_model``),
so each prediction comes from the model that reached the far end. Bad payloads are refused by the
provider before InvokeEndpoint (moto would answer anything). ``received_deploy`` reads what the
moto server itself received (``far_end.FAR_END``), decoded with botocore's service model.
"""

from __future__ import annotations

from mlcloud.provider import Provider
from mlcloud.records import EndpointRecord, EndpointState, Plan
from mlcloud.specs import Deployment
from tests.conformance.endpoints import PAYLOAD, EndpointConformance
from tests.conformance.jobs import Sent
from tests.providers.sagemaker.conftest import backend, serve_deployed_model
from tests.providers.sagemaker.far_end import FAR_END


class TestSageMakerEndpointConformance(EndpointConformance):
    def settle_endpoint(self, provider: Provider, record: EndpointRecord) -> EndpointRecord:
        # deploy waited for InService (moto is InService at once); the container now answers.
        assert record.state is EndpointState.READY, record.message
        import os

        serve_deployed_model(os.environ["AWS_ENDPOINT_URL"], record.name, PAYLOAD)
        return provider.endpoint_status(record.name)

    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name="scale0", model=model, replicas={"min": 0, "max": 2})

    def far_end_traffic(self, provider: Provider, name: str) -> dict[str, int] | None:
        # moto's own endpoint: each variant's current weight (absent for a weight of 0)
        variants = backend().endpoints[name].production_variants
        return {v["VariantName"]: int(v.get("CurrentWeight", 0)) for v in variants}

    def received_deploy(
        self, provider: Provider, plan: Plan[Deployment], record: EndpointRecord
    ) -> Sent:
        # Every write mlcloud's clients sent since the test began (the S3 model upload aside).
        return FAR_END.sent()
