"""The proto-JSON shapes of the ``aiplatform_v1`` requests mlcloud plans (camelCase keys, enum
names, int64 as strings), as TypedDicts: the planners build these without importing the SDK,
``jobs``/``endpoints`` parse them strictly into the real protos. Only the fields mlcloud sets."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class EnvVar(TypedDict):
    name: str
    value: str


class MachineSpec(TypedDict):
    machineType: str
    acceleratorType: NotRequired[str]  # an AcceleratorType enum name
    acceleratorCount: NotRequired[int]


# ---- JobService.CreateCustomJob --------------------------------------------------------------
class ContainerSpec(TypedDict):
    imageUri: str
    command: list[str]
    env: list[EnvVar]


class DiskSpec(TypedDict):
    bootDiskType: str
    bootDiskSizeGb: int


class WorkerPoolSpec(TypedDict):
    machineSpec: MachineSpec
    replicaCount: str  # int64
    diskSpec: DiskSpec
    containerSpec: ContainerSpec


class Scheduling(TypedDict):
    timeout: str  # a Duration: "3600s"
    restartJobOnWorkerRestart: NotRequired[bool]
    strategy: NotRequired[str]


class GcsDestination(TypedDict):
    outputUriPrefix: str


class CustomJobSpec(TypedDict):
    workerPoolSpecs: list[WorkerPoolSpec]
    scheduling: Scheduling
    baseOutputDirectory: GcsDestination
    serviceAccount: NotRequired[str]
    network: NotRequired[str]


class CustomJob(TypedDict):
    displayName: str
    jobSpec: CustomJobSpec
    labels: dict[str, str]


class CreateCustomJobRequest(TypedDict):
    parent: str
    customJob: CustomJob


# ---- ModelService.UploadModel ----------------------------------------------------------------
class Port(TypedDict):
    containerPort: int


class ModelContainerSpec(TypedDict):
    imageUri: str
    env: list[EnvVar]
    ports: list[Port]
    predictRoute: str
    healthRoute: str


class Model(TypedDict):
    displayName: str
    artifactUri: str
    versionAliases: list[str]
    labels: dict[str, str]
    containerSpec: ModelContainerSpec


class UploadModelRequest(TypedDict):
    parent: str
    model: Model
    parentModel: NotRequired[str]  # a new version of this model ...
    modelId: NotRequired[str]  # ... or a new model with this id
    serviceAccount: NotRequired[str]


# ---- EndpointService -------------------------------------------------------------------------
class Endpoint(TypedDict):
    displayName: str
    labels: dict[str, str]
    predictRequestResponseLoggingConfig: NotRequired[dict[str, Any]]  # capture (issue 13)


class CreateEndpointRequest(TypedDict):
    parent: str
    endpointId: str
    endpoint: Endpoint


class DedicatedResources(TypedDict):
    machineSpec: MachineSpec
    minReplicaCount: int
    maxReplicaCount: int


class DeployedModel(TypedDict):
    model: str
    displayName: str
    dedicatedResources: DedicatedResources


class DeployModelRequest(TypedDict):
    endpoint: str
    deployedModel: DeployedModel
    trafficSplit: dict[str, int]  # "0": the model being deployed


class UndeployModelRequest(TypedDict):
    endpoint: str
    deployedModelId: str
