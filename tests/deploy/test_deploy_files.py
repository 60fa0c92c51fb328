"""Checks every file under deploy/: syntax, and the properties a reviewer relies on."""

import configparser
import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = os.environ.get("ARK_GATEWAY_BIN", str(ROOT / "target/debug/ark-gateway"))


def k8s_documents():
    return list(yaml.safe_load_all((DEPLOY / "kubernetes/sidecar.yaml").read_text()))


def test_kubernetes_manifest_is_a_hardened_sidecar():
    docs = {d["kind"]: d for d in k8s_documents() if d}
    assert {"ConfigMap", "Secret", "Deployment"} <= set(docs)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    names = [c["name"] for c in pod["containers"]]
    assert names == ["app", "ark-gateway"]
    gateway = pod["containers"][1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["allowPrivilegeEscalation"] is False
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["resources"]["requests"] and gateway["resources"]["limits"]
    # Only the gateway mounts the Ark key; the app gets its team token.
    app_env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert app_env["ARK_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] != "ark-api-key"
    assert app_env["ARK_BASE_URL"]["value"].startswith("http://127.0.0.1:8080/")
    assert not any(m["name"] == "ark-api-key" for m in pod["containers"][0].get("volumeMounts", []))
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_the_configmap_config_passes_check(tmp_path):
    config = next(d for d in k8s_documents() if d and d["kind"] == "ConfigMap")["data"]["ark-gateway.toml"]
    key = tmp_path / "api-key"
    key.write_text("sk-placeholder\n")
    path = tmp_path / "ark-gateway.toml"
    path.write_text(config.replace("/run/secrets/ark/api-key", str(key)))
    result = subprocess.run([BIN, "check", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_prometheus_scrape_config_parses():
    scrape = yaml.safe_load((DEPLOY / "prometheus/scrape.yaml").read_text())
    jobs = {j["job_name"]: j for j in scrape["scrape_configs"]}
    assert jobs["ark-gateway"]["metrics_path"] == "/metrics"
    assert "kubernetes_sd_configs" in jobs["ark-gateway-sidecars"]


def test_systemd_unit_is_well_formed_and_sandboxed():
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string((DEPLOY / "systemd/ark-gateway.service").read_text())
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"].startswith("/usr/local/bin/ark-gateway run --config ")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["KillSignal"] == "SIGTERM"
    for hardening in ("NoNewPrivileges", "ProtectSystem", "DynamicUser", "PrivateTmp"):
        assert hardening in service


def test_dockerfile_is_multi_stage_and_non_root():
    lines = [l.strip() for l in (DEPLOY / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    instructions = {"FROM", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}
    continued = False
    for line in lines:
        if not continued:
            assert line.split()[0] in instructions, line
        continued = line.endswith("\\")
    froms = [l for l in lines if l.startswith("FROM ")]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    assert any(l.startswith("COPY --from=build ") for l in lines)
    assert [l for l in lines if l.startswith("USER ")][-1] != "USER root"
    # Everything the build copies exists.
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
