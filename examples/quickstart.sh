#!/usr/bin/env bash
# The main job: train iris locally, serve the model, ask it for a prediction, clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
job=$(mlcloud train examples/iris/job.yaml)          # detached; prints the job id
mlcloud logs "$job" --follow                         # stream until it ends
mlcloud jobs show "$job"
mlcloud deploy "$job" --name iris                    # serve that job's model on 127.0.0.1
mlcloud predict iris --data '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}'
mlcloud undeploy iris
