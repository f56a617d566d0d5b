"""deploy/serve.yaml and deploy/kuberay.yaml stay deployable: Ray Serve accepts their config,
their settings are Settings, and their application builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings

pytest.importorskip("ray.serve")
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from app.cluster.deployment import affinity_key, build_app  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def serve_configs() -> list[tuple[str, dict[str, Any]]]:
    kuberay = [doc for doc in yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text())
               if doc["kind"] == "RayService"]
    return [("serve.yaml", yaml.safe_load((DEPLOY / "serve.yaml").read_text())),
            *(("kuberay.yaml", yaml.safe_load(doc["spec"]["serveConfigV2"])) for doc in kuberay)]


@pytest.mark.parametrize(("name", "config"), serve_configs(), ids=lambda v: v if isinstance(
    v, str) else "")
def test_the_serve_config_deploys_this_application(name: str, config: dict[str, Any]) -> None:
    schema = ServeDeploySchema.parse_obj(config)
    [application] = schema.applications
    assert application.import_path == "app.cluster.deployment:build_app"
    settings = application.args["settings"]
    assert set(settings) <= set(Settings.model_fields), name
    Settings(**settings)  # every value valid
    app = build_app(application.args)
    assert app._bound_deployment.name == "Ingress"


@pytest.mark.parametrize(("path", "key"), [
    ("/predict/senti", "senti"), ("/predict/senti/", "senti"), ("/predict/", ""),
    ("/predict/a/b", ""), ("/adapters/senti", ""), ("/jobs/1/events", "")])
def test_a_prediction_is_routed_by_its_adapter_and_nothing_else_is(path: str, key: str) -> None:
    assert affinity_key(path) == key


def test_a_local_cluster_has_room_for_its_replicas_and_a_training_job() -> None:
    from app.cluster.launch import ClusterOptions, local_cpus

    options = ClusterOptions(replicas=2, address=None, host="127.0.0.1", port=8000,
                             replica_cpus=1.0, replica_gpus=0.0)
    # Two replicas on two cores reserve both: the training job's task needs a third.
    assert local_cpus(options, Settings(), cores=2) == 3
    assert local_cpus(options, Settings(training_concurrency=2, cluster_train_cpus=2), cores=2) == 6
    assert local_cpus(options, Settings(), cores=16) == 16  # room enough: the cores
