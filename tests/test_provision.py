"""Production provisioning: poc/project.yml -> `nvflare provision` -> startup kits; a provisioned
local federation (server + 2 sites + admin users, loopback) runs a GPU-declaring job submitted with
the admin kit through the FLARE API; a site given a GPU by NVFlare runs the job with that GPU as
its only visible device; roles are enforced; a kit of another provisioned project cannot join."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from deploy_helpers import (PROJECT_YML, assert_nothing_left, export_toy_job, job_process_env, listening_addresses,
                            make_toy_sites, read_events, round_numbers, site_python, wait_for)  # noqa: F401
from fedxmodal.deploy import federation as deploy

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SITES = ("ct-site", "mr-site")
PROJECT_ADMIN = "admin@coordinator.example.org"
MEMBER = "observer@hospital-b.example.org"
ORG_ADMIN = "it-admin@hospital-a.example.org"
LEAD = "researcher@hospital-a.example.org"


def fake_nvidia_smi(folder: Path, n_gpus: int = 2, mib: int = 16000) -> Path:
    """An ``nvidia-smi`` answering NVFlare's queries for ``n_gpus`` GPUs (this machine has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = " ".join(str(i) for i in range(n_gpus))
    (folder / "nvidia-smi").write_text(f"""#!/bin/sh
case "$1" in
  --query-gpu=index) echo index; for i in {ids}; do echo $i; done ;;
  --query-gpu=memory.total) echo "memory.total [MiB]"; for i in {ids}; do echo "{mib} MiB"; done ;;
  --query-gpu=memory.free) echo "memory.free [MiB]"; for i in {ids}; do echo "{mib} MiB"; done ;;
  *) exit 1 ;;
esac
""")
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def loopback_project(port: int, name: str = "fedxmodal") -> dict:
    """poc/project.yml as is, except the server: named ``localhost`` (its certificate is issued for
    the name the sites and admins connect to; NVFlare then listens on 127.0.0.1 only), on ``port``."""
    project = yaml.safe_load(PROJECT_YML.read_text())
    project["name"] = name
    for p in project["participants"]:
        if p["type"] == "server":
            p.update(name="localhost", fed_learn_port=port, admin_port=port)
    return project


def provision_loopback(tmp: Path, port: int, name: str = "fedxmodal") -> tuple:
    project = loopback_project(port, name)
    (tmp / "project.yml").write_text(yaml.safe_dump(project, sort_keys=False))
    return project, deploy.provision(tmp / "project.yml", tmp / "provisioning")


# ------------------------------------------------------------------------------------ kits
def test_project_yml_provisions_startup_kits(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    prod = deploy.provision(PROJECT_YML, tmp_path)
    project = yaml.safe_load(PROJECT_YML.read_text())
    assert prod == tmp_path / "fedxmodal" / "prod_00"
    server = "fl-server.example.org"
    assert (prod / server / "startup" / "start.sh").is_file() and (prod / server / "startup" / "server.crt").is_file()
    for site in SITES:
        kit = prod / site
        assert (kit / "startup" / "start.sh").is_file() and (kit / "startup" / "client.crt").is_file()
        assert (kit / "local" / "resources.json.default").is_file()
        target = json.loads((kit / "startup" / "fed_client.json").read_text())["servers"][0]["service"]["target"]
        assert target == f"{server}:8002"
    roles = {p["name"]: p["role"] for p in project["participants"] if p["type"] == "admin"}
    assert sorted(roles.values()) == ["lead", "member", "org_admin", "project_admin"]
    for user, role in roles.items():
        cert = x509.load_pem_x509_certificate((prod / user / "startup" / "client.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == user
        assert cert.subject.get_attributes_for_oid(NameOID.UNSTRUCTURED_NAME)[0].value == role
        assert json.loads((prod / user / "startup" / "fed_admin.json").read_text())["admin"]["host"] == server
    # every kit trusts the same root CA, and only that one
    ca = (prod / server / "startup" / "rootCA.pem").read_bytes()
    assert all((prod / n / "startup" / "rootCA.pem").read_bytes() == ca for n in [*SITES, *roles])


# ------------------------------------------------------------------------------------ running
@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, site_python):
    tmp = tmp_path_factory.mktemp("provisioned")
    port = deploy.free_port()
    project, prod = provision_loopback(tmp, port)
    fed = deploy.Federation.from_kits(tmp / "federation", prod, project, admin=PROJECT_ADMIN, python=site_python)
    # what each operator does with its own kit
    deploy.configure_server(fed.kit(fed.server), heartbeat_timeout=60, storage_root=tmp / "server-storage")
    data = make_toy_sites(tmp / "data", SITES)
    for site in SITES:
        deploy.configure_site_data(fed.kit(site), data / site)
    fed.site_gpus = {"ct-site": [1], "mr-site": []}  # ct-site has a GPU box (GPU 1 is its), mr-site only CPUs
    deploy.configure_site_resources(fed.kit("ct-site"), [1])
    deploy.configure_site_resources(fed.kit("mr-site"), [])
    smi = fake_nvidia_smi(tmp / "fake-gpu")
    events = tmp / "events"
    events.mkdir()
    site_env = {"ct-site": {"PATH": f"{smi}{os.pathsep}{os.environ['PATH']}"}}
    try:
        fed.start(env={"FEDXMODAL_TOY_EVENTS": str(events)}, site_env=site_env, timeout=240)
        yield dict(fed=fed, tmp=tmp, events=events, project=project, port=port)
    finally:
        fed.stop()
        assert_nothing_left(fed.root)


@pytest.mark.slow
def test_provisioned_federation_runs_a_gpu_job(provisioned):
    fed, tmp = provisioned["fed"], provisioned["tmp"]
    assert fed.connected_sites() == sorted(SITES)
    assert listening_addresses(provisioned["port"]) == ["127.0.0.1"]  # loopback only
    job = export_toy_job(tmp / "jobs", name="gpujob", num_rounds=2, resource_spec={"@default": {"num_of_gpus": 1}},
                         client_args={"local_epochs": 30})
    assert json.loads((job / "meta.json").read_text())["resource_spec"] == {"@default": {"num_of_gpus": 1}}
    job_id = fed.submit(job)

    # NVFlare allocated GPU 1 of ct-site to the job: its job process sees only that device;
    # mr-site (no GPU, passthrough resource manager) accepted the same job and runs it on its CPU.
    env = wait_for(lambda: job_process_env(fed, "ct-site", "CUDA_VISIBLE_DEVICES"), 120, "ct-site's job process")
    assert set(env.values()) == {"1"}
    wait_for(lambda: [p for p in fed.processes("mr-site") if "worker_process" in p.cmdline], 60, "mr-site's job")
    assert job_process_env(fed, "mr-site", "CUDA_VISIBLE_DEVICES") == {}

    meta = fed.wait_job(job_id, timeout=300)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    assert meta["submitter_name"] == PROJECT_ADMIN and meta["submitter_role"] == "project_admin"
    result = fed.download(job_id, tmp / "results")
    assert (result / "workspace" / "app_server" / "FL_global_model.pt").is_file()
    assert round_numbers(result / "workspace") == [0, 1]
    cse = json.loads((result / "workspace" / "cross_site_val" / "cross_val_results.json").read_text())
    assert set(cse) == set(SITES)
    # the sites used the code shipped with the job (their Python has no fedxmodal)
    for site in SITES:
        files = {e["fedxmodal_file"] for e in read_events(provisioned["events"], site)}
        assert files and all(f.startswith(str(fed.kit(site) / job_id)) for f in files), files


@pytest.mark.slow
def test_roles_decide_who_may_submit(provisioned):
    from nvflare.fuel.flare_api.api_spec import AuthorizationError

    fed, tmp = provisioned["fed"], provisioned["tmp"]
    job = export_toy_job(tmp / "jobs", name="rolejob", num_rounds=1, cross_site_eval=False)
    for user in (MEMBER, ORG_ADMIN):
        with fed.session(user=user, kit=fed.kit(user)) as s:
            with pytest.raises(AuthorizationError):
                s.submit_job(str(job))
            assert s.list_jobs() is not None  # viewing is allowed
    with fed.session(user=LEAD, kit=fed.kit(LEAD)) as s:  # a lead may submit (custom code included)
        job_id = s.submit_job(str(job))
        s.abort_job(job_id)
    assert fed.wait_job(job_id, timeout=120)["status"].startswith("FINISHED")


def server_answers(port: int, kit: Path, ca: Path) -> bool:
    """Whether the server answers an HTTP request sent over TLS with ``kit``'s client certificate
    (trusting ``ca``). The server's listener is mutual TLS: it drops a connection whose client
    certificate it does not accept without answering (b'' / a TLS alert)."""
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(kit / "startup" / "client.crt"), str(kit / "startup" / "client.key"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return tls.recv(64).startswith(b"HTTP/")
    except (ssl.SSLError, ConnectionError):
        return False


@pytest.mark.slow
def test_kit_of_another_project_cannot_join(provisioned, site_python):
    """A second project provisioned the same way (same project name, same server address, one more
    site, pet-site): its kit cannot join -- the kit does not trust our server, and our server
    refuses its certificate (not issued by our root CA) even when the intruder trusts our server
    with our public rootCA.pem. It never appears among the connected sites."""
    fed, tmp = provisioned["fed"], provisioned["tmp"]
    other = tmp / "other-project"
    other.mkdir()
    project_b = loopback_project(provisioned["port"])
    project_b["participants"].append({"name": "pet-site", "type": "client", "org": "hospital_c"})
    (other / "project.yml").write_text(yaml.safe_dump(project_b, sort_keys=False))
    prod_b = deploy.provision(other / "project.yml", other / "provisioning")
    our_ca = fed.kit("ct-site") / "startup" / "rootCA.pem"
    assert (prod_b / "pet-site" / "startup" / "rootCA.pem").read_bytes() != our_ca.read_bytes()

    # the server side (mutual TLS): it answers our site's certificate, not theirs -- not even one
    # with the name of one of our sites
    assert server_answers(provisioned["port"], fed.kit("ct-site"), our_ca)
    assert not server_answers(provisioned["port"], prod_b / "pet-site", our_ca)
    assert not server_answers(provisioned["port"], prod_b / "ct-site", our_ca)

    # the whole kit, started as its operator would
    intruder = deploy.Federation.from_kits(other / "federation", prod_b, project_b, python=site_python)
    deploy.configure_site_data(intruder.kit("pet-site"), tmp / "data" / "ct-site")
    try:
        intruder.start(["pet-site"], wait=False)
        log = intruder.kit("pet-site") / "log.txt"
        wait_for(lambda: log.is_file() and "CERTIFICATE_VERIFY_FAILED" in log.read_text(), 90,
                 "the intruder's refused connection")
        for _ in range(5):  # it keeps trying and never gets in
            assert intruder.processes("pet-site"), "the intruder kit stopped on its own"
            assert fed.connected_sites() == sorted(SITES)
            time.sleep(2)
        assert "Successfully registered client" not in log.read_text()
    finally:
        intruder.stop()
    assert_nothing_left(intruder.root)
    assert "SSL pet-site]" not in (fed.kit(fed.server) / "log.txt").read_text()
    assert fed.connected_sites() == sorted(SITES)  # the federation is unaffected
