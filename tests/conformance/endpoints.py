"""The provider conformance suite, endpoint half: deploy → ready → predict → update → undeploy.

A provider joins by subclassing :class:`EndpointConformance` in its own test module (like the
job half in ``jobs.py``) and supplying the hooks below. Every provider runs the same tests
against its real SDK and its local far end.

Hooks a subclass provides:

* fixture ``provider`` -> a ready ``Provider`` (its store under a temp ``MLCLOUD_HOME``)
* ``model_uri(root, variant)`` -> the ``model`` of a Deployment for variant ``"a"`` or ``"b"``:
  two models whose predictions for ``PAYLOAD`` differ (``predicted(variant)`` each). The default
  writes a custom-framework model dir under ``root`` whose predictor answers the variant name.
* ``make_deployment(name, model)`` -> ``Deployment`` (default: one replica, nothing else)
* ``settle_endpoint(provider, record)`` -> drive a deploy to its end: a real backend has
  already waited for readiness; a fake backend flips the endpoint the way the cloud would
* ``unsupported_deployment(model)`` -> a deployment using a feature the provider lacks, or ``None``
* ``received_deploy(provider, plan, record)`` -> what the far end received for this deploy, as
  ``[(call, request), ...]`` in the plan's own format; the shared test asserts it equals
  ``plan.steps`` (see the job half)
* ``far_end_traffic(provider, name)`` -> the split the far end itself now applies (version id →
  percent, versions at 0 included), read from the backend's own state; ``None`` (the default)
  skips that assertion. Providers with ``Capability.TRAFFIC_SPLIT`` run the traffic test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlcloud import modeldir
from mlcloud.errors import MlcloudError, NotFoundLocally, SpecError, Transient, UnsupportedFeature
from mlcloud.provider import Capability, Provider
from mlcloud.records import EndpointRecord, EndpointState, Plan
from mlcloud.specs import Deployment, TrustGrant
from tests.conformance.jobs import Sent, planned

PAYLOAD: dict[str, Any] = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
BAD_PAYLOADS: tuple[Any, ...] = (
    {"instances": "not a list of rows"},
    {"no_instances_key": [[1.0]]},
    {"instances": []},
)

_PREDICTOR = '''"""A conformance model: answers {answer!r} for every row."""


class Predictor:
    def predict(self, inputs):
        return [{answer!r} for _ in inputs]
'''


#: what deploying the suite's custom-predictor models needs: their code runs when loaded, which
#: these tests allow as `mlcloud deploy --trust-code` would (issue 16's trust model)
TRUSTED = TrustGrant(by="trust-code")


def make_custom_model(root: Path, answer: str) -> Path:
    """A custom-framework model dir whose predictor answers ``answer`` for every row."""
    src = root / f"src-{answer}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "conformance_predictor.py").write_text(_PREDICTOR.format(answer=answer))
    return modeldir.save(
        src, "custom", root / f"model-{answer}", predictor="conformance_predictor:Predictor"
    )


def _normalised(plan: Plan[Any]) -> str:
    text = plan.to_json()
    for value in plan.volatile:
        text = text.replace(value, "<volatile>")
    return text


class EndpointConformance:
    """Subclass me. See the module docstring for the hooks."""

    endpoint_name: ClassVar[str] = "conformance-ep"

    # ---- hooks -------------------------------------------------------------------------------
    def model_uri(self, root: Path, variant: str) -> str:
        return str(make_custom_model(root, variant))

    def predicted(self, variant: str) -> list[Any]:
        """What the variant's model answers for ``PAYLOAD``."""
        return [variant] * len(PAYLOAD["instances"])

    def make_deployment(self, name: str, model: str) -> Deployment:
        return Deployment(name=name, model=model, trust=TRUSTED)

    def settle_endpoint(self, provider: Provider, record: EndpointRecord) -> EndpointRecord:
        return provider.endpoint_status(record.name)

    def unsupported_deployment(self, model: str) -> Deployment | None:
        return None

    def received_deploy(
        self, provider: Provider, plan: Plan[Deployment], record: EndpointRecord
    ) -> Sent:
        raise NotImplementedError

    def far_end_traffic(self, provider: Provider, name: str) -> dict[str, int] | None:
        return None

    @staticmethod
    def predictions(result: Any) -> list[Any]:
        assert isinstance(result, dict) and "predictions" in result, result
        return list(result["predictions"])

    # ---- plan --------------------------------------------------------------------------------
    def test_plan_deploy_is_pure_and_printable(self, provider: Provider, tmp_path: Path) -> None:
        deployment = self.make_deployment(self.endpoint_name, self.model_uri(tmp_path, "a"))
        first = provider.plan_deploy(deployment)
        second = provider.plan_deploy(deployment)
        assert isinstance(first, Plan) and first.kind == "deploy"
        assert _normalised(first) == _normalised(second)
        data = json.loads(first.to_json())
        assert data["provider"] == provider.name and data["type"] == provider.type
        assert data["steps"], "a plan has at least one native call"
        for step in data["steps"]:
            service, _, operation = step["call"].partition(".")
            assert service and operation, step["call"]
            assert isinstance(step["request"], dict)
        assert provider.list_endpoints() == [], "plan_deploy wrote state"

    def test_unsupported_feature_raised_at_plan_time(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        deployment = self.unsupported_deployment(self.model_uri(tmp_path, "a"))
        if deployment is None:
            pytest.skip(f"{provider.type} supports every feature a deployment can ask for")
        with pytest.raises(UnsupportedFeature) as err:
            provider.plan_deploy(deployment)
        assert err.value.provider.startswith(provider.type)

    def test_far_end_received_the_plan(self, provider: Provider, tmp_path: Path) -> None:
        name = self.endpoint_name + "-sent"
        plan = provider.plan_deploy(self.make_deployment(name, self.model_uri(tmp_path, "a")))
        try:
            record = provider.deploy(plan)
            assert self.received_deploy(provider, plan, record) == planned(plan)
        finally:
            provider.undeploy(name)

    def test_plan_from_another_provider_is_refused(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        plan = provider.plan_deploy(
            self.make_deployment(self.endpoint_name, self.model_uri(tmp_path, "a"))
        )
        for forged in (replace(plan, provider=plan.provider + "-other"), replace(plan, kind="job")):
            with pytest.raises(SpecError):
                provider.deploy(forged)
        assert provider.list_endpoints() == []

    # ---- unknown endpoints -------------------------------------------------------------------
    def test_unknown_endpoint_is_a_clear_error(self, provider: Provider) -> None:
        for call in (provider.endpoint_status, lambda n: provider.predict(n, PAYLOAD)):
            with pytest.raises(MlcloudError) as err:
                call("no-such-endpoint")
            assert "no-such-endpoint" in str(err.value)

    def test_undeploy_unknown_is_a_noop(self, provider: Provider) -> None:
        assert provider.undeploy("no-such-endpoint") is None

    # ---- lifecycle ---------------------------------------------------------------------------
    def test_deploy_predict_update_undeploy(self, provider: Provider, tmp_path: Path) -> None:
        name = self.endpoint_name
        model_a, model_b = self.model_uri(tmp_path, "a"), self.model_uri(tmp_path, "b")
        try:
            record = provider.deploy(provider.plan_deploy(self.make_deployment(name, model_a)))
            record = self.settle_endpoint(provider, record)
            assert record.state is EndpointState.READY, record.message
            assert record.name == name and record.provider == provider.name
            assert record.type == provider.type and record.url
            assert name in {e.name for e in provider.list_endpoints()}
            assert self.predictions(provider.predict(name, PAYLOAD)) == self.predicted("a")

            # Bad payloads are the caller's fault: a clear error, never a retryable 5xx.
            for bad in BAD_PAYLOADS:
                with pytest.raises(MlcloudError) as err:
                    provider.predict(name, bad)
                assert not isinstance(err.value, Transient), err.value
                assert str(err.value).strip()

            # Re-deploying the name updates it in place, behind the same address.
            updated = provider.deploy(provider.plan_deploy(self.make_deployment(name, model_b)))
            updated = self.settle_endpoint(provider, updated)
            assert updated.state is EndpointState.READY, updated.message
            assert updated.url == record.url
            assert updated.model_sha256 != record.model_sha256
            assert self.predictions(provider.predict(name, PAYLOAD)) == self.predicted("b")
            assert [e.name for e in provider.list_endpoints()].count(name) == 1
        finally:
            gone = provider.undeploy(name)
        assert gone is not None and gone.state is EndpointState.DELETED
        assert provider.undeploy(name) is None, "undeploy is idempotent"
        with pytest.raises(NotFoundLocally):
            provider.store.get_endpoint(name, provider=provider.name)

    # ---- traffic splits (providers with Capability.TRAFFIC_SPLIT) ---------------------------

    def _split(
        self, provider: Provider, name: str, record: EndpointRecord, expected: dict[str, int]
    ) -> None:
        assert record.details["traffic"] == expected
        assert set(record.details["versions"]) == set(expected)
        assert provider.endpoint_status(name).details["traffic"] == expected
        far_end = self.far_end_traffic(provider, name)
        assert far_end is None or far_end == expected, far_end

    def _canary(self, provider: Provider, name: str, model: str, share: int) -> EndpointRecord:
        base = self.make_deployment(name, model)
        dep = base.model_copy(update={"traffic": {"new": share, "previous": 100 - share}})
        record = provider.deploy(provider.plan_deploy(dep))
        settled: EndpointRecord = self.settle_endpoint(provider, record)
        return settled

    def test_traffic_canary_promote_and_rollback(self, provider: Provider, tmp_path: Path) -> None:
        if Capability.TRAFFIC_SPLIT not in provider.capabilities:
            pytest.skip(f"{provider.type} has no traffic splits")
        name = self.endpoint_name + "-tr"
        model_a = self.model_uri(tmp_path, "a")
        model_b = self.model_uri(tmp_path, "b")
        try:
            plain = self.make_deployment(name, model_a)
            first = self.settle_endpoint(provider, provider.deploy(provider.plan_deploy(plain)))
            old = first.details["newest"]
            self._split(provider, name, first, {old: 100})
            assert first.details["versions"][old]["sha256"] == first.model_sha256

            canary = self._canary(provider, name, model_b, 10)
            new = canary.details["newest"]
            assert new != old and canary.details["versions"][new]["sha256"] != first.model_sha256
            self._split(provider, name, canary, {old: 90, new: 10})

            # bad weights are refused before anything is sent
            for bad in ({old: 50, new: 40}, {old: 50, "no-such-version": 50}, {}):
                with pytest.raises(SpecError):
                    provider.set_traffic(name, bad)
            self._split(provider, name, provider.endpoint_status(name), {old: 90, new: 10})

            self._split(
                provider, name, provider.set_traffic(name, {old: 50, new: 50}), {old: 50, new: 50}
            )
            promoted = self.settle_endpoint(provider, provider.set_traffic(name, {new: 100}))
            self._split(provider, name, promoted, {new: 100})
            assert promoted.model_sha256 == canary.details["versions"][new]["sha256"]
            assert self.predictions(provider.predict(name, PAYLOAD)) == self.predicted("b")

            # a canary of model a, rolled back: the new version retired, b keeps serving
            again = self._canary(provider, name, model_a, 20)
            retiring = again.details["newest"]
            self._split(provider, name, again, {new: 80, retiring: 20})
            rolled = self.settle_endpoint(provider, provider.set_traffic(name, {new: 100}))
            self._split(provider, name, rolled, {new: 100})
            assert rolled.details["versions"][new]["sha256"] == promoted.model_sha256
            assert self.predictions(provider.predict(name, PAYLOAD)) == self.predicted("b")
        finally:
            provider.undeploy(name)
