"""The deployment engine on loopback: a real ``flower-superlink``, real ``flower-supernode``
processes and ``flwr run``, with the same ServerApp/ClientApp the simulation uses.

The federation is secured: TLS with a CA and server certificate made here for 127.0.0.1, and
SuperNode authentication with P-384 keys registered through ``flwr supernode register``. It must
give the simulation's result bit for bit on this machine, a SuperNode whose key was never
registered is refused, and each SuperNode holds only its own partition: ``bench partitions``
writes one file per party, each SuperNode gets its file (and nothing else) through its node
config, and the server only the manifest (counts and shape, no images). (A plain ``--insecure``
federation runs the same code path minus TLS and auth; ``Federation(pki=None)`` starts one. It is
not a test of its own because each federation costs ~90 s here: every ClientApp message starts a
``flwr-clientapp`` process that imports torch.)

Flower 1.42 notes (found in its source): one port serves the SuperLink's Fleet, Control and
Runtime APIs over HTTP(S) (``--host``/``--port``); each SuperNode needs its own ``--port`` for its
ClientApp runtime API; ``flwr run . <connection>`` takes a *SuperLink connection* from
``$FLWR_HOME/config.toml`` (``[superlink.<name>] address, insecure | root-certificates``), not a
federation from pyproject; SuperNode keys are EC keys on a NIST curve in OpenSSH format, the
public half registered with ``flwr supernode register <key.pub> <connection>`` and the private
half given to ``flower-supernode --auth-supernode-private-key``; SuperNodes ignore SIGTERM while
they retry, so we stop them with SIGKILL on their process group.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from benchmark.scenarios import Scenario

pytestmark = pytest.mark.deployment

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCENARIO = Scenario(name="deploy", num_clients=2, clients_per_round=2, rounds=1, max_train_images=24,
                    batch_size=8, num_train_timesteps=50, sample_steps=5)
NUM_NODES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_exe(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        exe = shutil.which(name)
        if exe is None:
            pytest.skip(f"{name} not installed")
    return str(exe)


def child_env(flwr_home: Path) -> dict:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # flwr-serverapp/-clientapp/-superexec
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return env


# ------------------------------------------------------------------------------ keys and certificates
def make_pki(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, and three SuperNode key pairs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (x509.CertificateBuilder().subject_name(name("feddp test CA")).issuer_name(name("feddp test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    srv_key = ec.generate_private_key(ec.SECP384R1())
    srv = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
           .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                          critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .sign(ca_key, hashes.SHA256()))
    paths = {"ca": root / "ca.crt", "cert": root / "server.pem", "key": root / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(pem_key(srv_key))
    for i in range(NUM_NODES + 1):
        k = ec.generate_private_key(ec.SECP384R1())
        paths[f"node{i}"] = root / f"node{i}"
        paths[f"node{i}"].write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                      serialization.NoEncryption()))
        paths[f"node{i}.pub"] = root / f"node{i}.pub"
        paths[f"node{i}.pub"].write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                      serialization.PublicFormat.OpenSSH))
    return paths


# ------------------------------------------------------------------------------ processes
class Federation:
    def __init__(self, root: Path, *, pki: dict[str, Path] | None):
        self.root, self.pki = root, pki
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True)
        self.port = free_port()
        self.env = child_env(self.home)
        self.procs: list[subprocess.Popen] = []
        tls = f'root-certificates = "{pki["ca"]}"' if pki else "insecure = true"
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{self.port}"\n{tls}\n')

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "wb")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                             start_new_session=True)
        p.log_path = self.root / f"{name}.log"
        self.procs.append(p)
        return p

    def start_superlink(self) -> None:
        args = [flwr_exe("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.pki:
            args += ["--ssl-ca-certfile", str(self.pki["ca"]), "--ssl-certfile", str(self.pki["cert"]),
                     "--ssl-keyfile", str(self.pki["key"]), "--enable-supernode-auth"]
        else:
            args += ["--insecure"]
        link = self.spawn("superlink", args)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if link.poll() is not None:
                raise AssertionError(f"superlink exited: {link.log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise AssertionError("superlink did not open its port in 60 s")

    def register(self, pub: Path) -> subprocess.CompletedProcess:
        return subprocess.run([flwr_exe("flwr"), "supernode", "register", str(pub), "test"], env=self.env,
                              cwd=self.root, capture_output=True, text=True, timeout=60)

    def start_supernode(self, i: int, partition_file: Path, *, key: Path | None = None, name: str | None = None,
                        max_wait_s: float | None = None) -> subprocess.Popen:
        args = [flwr_exe("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", f'partition-id={i} partition-file="{partition_file}" threads=1']
        # threads=1: the nodes share this machine's cores, as the simulation's clients do (one
        # thread each on 2 cores); another thread count would change float sums, not just speed.
        args += ["--root-certificates", str(self.pki["ca"])] if self.pki else ["--insecure"]
        if key is not None:
            args += ["--auth-supernode-private-key", str(key)]
        if max_wait_s is not None:
            args += ["--max-wait-time", str(max_wait_s), "--max-retries", "1"]
        return self.spawn(name or f"supernode{i}", args)

    def run(self, out_dir: Path, manifest: Path, timeout: float = 240) -> subprocess.CompletedProcess:
        rc = self.root / "run-config.toml"
        rc.write_text(f"scenario = '{SCENARIO.to_json()}'\nseed = 0\nout-dir = \"{out_dir}\"\n"
                      f"partition-manifest = \"{manifest}\"\n")
        return subprocess.run([flwr_exe("flwr"), "run", str(REPO), "test", "--run-config", str(rc), "--stream"],
                              env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # its own session: superexec and app children too
                except ProcessLookupError:
                    pass
            p.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log_path.read_text(errors='replace')[-3000:]}"
                         for p in self.procs)


@contextmanager
def federation(root: Path, *, pki=None):
    fed = Federation(root, pki=pki)
    try:
        yield fed
    finally:
        fed.stop()


# ------------------------------------------------------------------------------ the reference
@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The same scenario and seed through the simulation engine (``bench run``'s path)."""
    out = tmp_path_factory.mktemp("sim")
    code = ("import sys, json; from benchmark.federation.simulation import simulate; "
            "simulate(json.loads(sys.argv[1]), num_clients=2, num_cpus=2)")  # one thread per client
    cfg = {"scenario": SCENARIO.to_json(), "seed": 0, "out-dir": str(out), "device": "cpu"}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=child_env(out / "flwr-home"))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def assert_same_result(deployed: Path, simulated: Path) -> None:
    a = torch.load(deployed / "global_model.pt", weights_only=True)
    b = torch.load(simulated / "global_model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"global model differs at {k}")
    ha = json.loads((deployed / "history.json").read_text())["rounds"]
    hb = json.loads((simulated / "history.json").read_text())["rounds"]
    strip = ("train_s", "round_s", "client_s_sum", "client_s_max", "compute_s_sum", "compute_s_max")  # clocks
    assert [{k: v for k, v in r.items() if k not in strip} for r in ha] == \
           [{k: v for k, v in r.items() if k not in strip} for r in hb]


def split_among_parties(root: Path) -> tuple[list[Path], Path]:
    """``bench partitions``, then each party's file on its own disk (a folder holding nothing
    else) and the manifest, without images, on the server's."""
    export = root / "export"
    res = subprocess.run([sys.executable, "-m", "benchmark.cli", "partitions", "--scenario", SCENARIO.to_json(),
                          "--seed", "0", "--out", str(export)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=child_env(root / "flwr-home-export"))
    assert res.returncode == 0, res.stderr[-2000:]
    files = []
    for i in range(NUM_NODES):
        (root / f"party{i}").mkdir()
        files.append(Path(shutil.copy(export / f"partition-{i}.npz", root / f"party{i}")))
    (root / "server").mkdir()
    manifest = Path(shutil.copy(export / "manifest.json", root / "server"))
    shutil.rmtree(export)
    return files, manifest


def test_secured_deployment_matches_simulation_and_refuses_unknown_supernodes(tmp_path, simulated):
    pki = make_pki(tmp_path / "pki")
    files, manifest = split_among_parties(tmp_path)
    counts = [p["num_images"] for p in json.loads(manifest.read_text())["partitions"]]
    with federation(tmp_path, pki=pki) as fed:
        fed.start_superlink()
        for i in range(NUM_NODES):
            reg = fed.register(pki[f"node{i}.pub"])
            assert reg.returncode == 0, reg.stdout + reg.stderr + fed.logs()
        # A SuperNode whose key was never registered is refused and gives up.
        intruder = fed.start_supernode(0, files[0], key=pki[f"node{NUM_NODES}"], name="intruder", max_wait_s=20)
        for i in range(NUM_NODES):
            fed.start_supernode(i, files[i], key=pki[f"node{i}"])
        assert intruder.wait(timeout=60) != 0, fed.logs()
        res = fed.run(tmp_path / "out", manifest)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:] + fed.logs()
        link_log = (tmp_path / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in link_log  # why the intruder was refused
    assert "Connection attempt failed" in intruder.log_path.read_text(errors="replace")
    assert_same_result(tmp_path / "out", simulated)
    # Each SuperNode held only its own partition: its ClientApp read its one file (the node's own
    # record, in its log), with its partition's image count, and never another party's file.
    for i in range(NUM_NODES):
        log = (tmp_path / f"supernode{i}.log").read_text(errors="replace")
        held = [line.split("feddp: ", 1)[1] for line in log.splitlines() if "feddp: partition" in line]
        assert held and set(held) == {f"partition {i} holds {counts[i]} training images ({files[i]})"}, log[-3000:]
