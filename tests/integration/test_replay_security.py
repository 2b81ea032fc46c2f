"""A run as a Redis ACL user limited to what it needs, and over TLS, on private servers.

The user is made from `replay.acl.acl_rules` alone; the round trip (writer, sampler, weight
store, first-contact check) then runs without one ACL refusal in the server's ACL LOG, except
the two commands left out on purpose. A user missing a command or a key pattern gets one
ReplayAuthError, at connect, naming the user, what is missing and the grant line; a grant taken
away mid-run is one error too, not a retry loop. TLS: a CA, a server and a client certificate
are made here; the server listens on TLS only (its plain port is closed once it is up), and the
same round trip runs through rediss:// as the ACL user. Skipped, with the server's words, where
the redis-server binary has no TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from critic_unlearn.config import ReplayConfig
from critic_unlearn.replay import (
    RedisServer,
    ReplayAuthError,
    ReplayConnectionError,
    ReplaySampler,
    ReplayWriter,
    WeightStore,
    check_reachable,
    encode_packet,
)
from critic_unlearn.replay.acl import acl_rule_list, acl_rules, commands, key_patterns
from critic_unlearn.replay.server import find_server_binary, free_port
from critic_unlearn.types import WeightsPacket
from tests.integration.conftest import make_trajectory

USER, PASSWORD = "critic", "s3cret-pw"
LEFT_OUT = {"config|get", "client|setinfo"}  # refused by design (acl.py says why)
FAST_S = 5.0  # a refusal is answered at once: no retries until replay.retry_deadline_s


def _cfg(url: str, ns: str, **kw: object) -> ReplayConfig:
    base: dict = dict(url=url, namespace=ns, capacity=8, min_size_to_sample=1,
                      samples_per_insert=1.0, error_buffer=1e9, timeout_s=2.0,
                      retry_deadline_s=30.0, socket_timeout_s=5.0)
    return ReplayConfig(**{**base, **kw})


def _user_url(port: int, scheme: str = "redis") -> str:
    return f"{scheme}://{USER}@127.0.0.1:{port}/0"  # the password comes from replay.password_env


def _set_user(admin: redis.Redis, rules: list[str]) -> None:
    admin.execute_command("ACL", "SETUSER", USER, *rules)


def _refusals(admin: redis.Redis) -> list[str]:
    """What the ACL LOG recorded as refused, beyond the commands left out on purpose."""
    return [f"{e['reason']}:{e['object']}" for e in admin.acl_log()
            if not (e["reason"] == "command" and e["object"] in LEFT_OUT)]


def _packet(version: int) -> WeightsPacket:
    state = {"unet.lora_A": torch.full((2, 3), version * 1e-3)}
    return WeightsPacket(version, state, {"base_model": "tiny", "lora_config_hash": "abc"})


def _round_trip(cfg: ReplayConfig) -> None:
    """Everything a run does on Redis: write, room, sample, priorities, stale release, stats,
    the weight store, the first-contact check, clear."""
    ns = cfg.namespace
    assert ns is not None
    check_reachable(cfg)
    with ReplayWriter(cfg) as w:
        assert w.has_room(1)
        refs = [w.write(make_trajectory(i, version=1)) for i in range(4)]
    assert sorted(r.id for r in refs) == [1, 2, 3, 4]
    with ReplaySampler(cfg) as s:
        got = s.sample(3, min_version=1)
        assert len(got) == 3 and all(r.trajectory.version == 1 for r in got)
        assert s.update_priorities(got, [2.0, 2.0, 2.0]) == 3
        assert s.release_if_all_stale(1) is None  # records at version 1 can still be drawn
        stats = s.stats()
        assert stats["replay/server_inserted"] == 4 and stats["replay/server_present"] == 4
    store = WeightStore(cfg, ns)
    try:
        store.put(encode_packet(_packet(3)), _packet(3))
        back = store.get()
        assert store.latest_version() == 3 and back is not None
        assert torch.equal(back.state_dict["unet.lora_A"], _packet(3).state_dict["unet.lora_A"])
        store.clear()
        assert store.get() is None
    finally:
        store.close()
    with ReplaySampler(cfg) as s:
        assert s.clear() > 0 and s.size() == 0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    try:
        find_server_binary()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with RedisServer() as s:
        yield s


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis(port=server.port) as r:  # the default user: all commands, all keys
        yield r


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CU_TEST_REDIS_PASSWORD", PASSWORD)
    return "CU_TEST_REDIS_PASSWORD"


# -- the rules ---------------------------------------------------------------------------------
def test_rules_name_the_run_prefixes_and_the_commands():
    assert key_patterns("run-1") == ("rb:{run-1:*", "w:{run-1}:*")
    line = acl_rules("run-1", "pw")
    assert line.startswith("reset on >pw ~rb:{run-1:* ~w:{run-1}:* -@all +")
    assert "+evalsha" in line.split() and "+script|load" in line.split()
    assert not {"+config|get", "+eval", "+keys", "+flushall"} & set(line.split())
    assert acl_rules("run-1").split() == [*(f"~{p}" for p in key_patterns("run-1")),
                                          *(f"+{c}" for c in commands())]
    with pytest.raises(ValueError, match=r"replay.namespace = 'a\*' is not allowed"):
        acl_rules("a*")


# -- an ACL user with exactly the rules ---------------------------------------------------------
def test_a_user_with_the_rules_runs_the_whole_round_trip(server, admin, password_env):
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    _set_user(admin, acl_rule_list(ns, PASSWORD))
    admin.set("other-run:secret", "x")
    admin.execute_command("ACL", "LOG", "RESET")
    _round_trip(_cfg(_user_url(server.port), ns, password_env=password_env))
    assert _refusals(admin) == []  # nothing refused: the rules are all a run needs
    with redis.Redis(port=server.port, username=USER, password=PASSWORD) as r:
        assert r.ping()  # the user logs in ...
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.get("other-run:secret")  # and no more than that
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.config_get("requirepass")


def test_every_key_a_run_makes_is_under_the_rules_patterns(server, admin):
    ns = f"keys-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(server.url, ns, shards=[server.url])  # two shards on one server: keys of both
    with ReplayWriter(cfg) as w:
        for actor in (0, 1):
            w.write(make_trajectory(actor, version=0, actor=actor), priority=1.0)
    store = WeightStore(cfg, ns)
    store.put(encode_packet(_packet(1)), _packet(1))
    store.close()
    keys = [k.decode() for k in admin.scan_iter(match=f"*{ns}*")]
    prefixes = [p.removesuffix("*") for p in key_patterns(ns)]
    assert any(k.startswith("rb:") for k in keys) and any(k.startswith("w:") for k in keys)
    assert all(any(k.startswith(p) for p in prefixes) for k in keys), keys
    assert {k.split("}")[0] + "}" for k in keys} == {f"rb:{{{ns}:0}}", f"rb:{{{ns}:1}}",
                                                      f"w:{{{ns}}}"}


def test_a_missing_command_is_one_error_at_connect(server, admin, password_env):
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    _set_user(admin, [r for r in acl_rule_list(ns, PASSWORD) if r not in ("+zmscore", "+hdel")])
    cfg = _cfg(_user_url(server.port), ns, password_env=password_env)
    t0 = time.monotonic()
    with pytest.raises(ReplayAuthError) as err:
        ReplayWriter(cfg)
    assert time.monotonic() - t0 < FAST_S
    msg = str(err.value)
    assert f"ACL user '{USER}' may not run what a run needs" in msg
    assert f"hdel rb:{{{ns}:0}}:head f" in msg and f"zmscore rb:{{{ns}:0}}:head m" in msg
    assert f"ACL SETUSER {USER} {acl_rules(ns)}," in msg and "\n" not in msg
    assert PASSWORD not in msg
    WeightStore(cfg, ns).close()  # the weight store needs neither: it connects


def test_a_missing_key_pattern_is_one_error_at_connect(server, admin, password_env):
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    _set_user(admin, [r for r in acl_rule_list(ns, PASSWORD) if not r.startswith("~w:")])
    cfg = _cfg(_user_url(server.port), ns, password_env=password_env)
    ReplayWriter(cfg).close()  # the replay's own prefix is granted
    for make in (lambda: WeightStore(cfg, ns), lambda: check_reachable(cfg)):
        with pytest.raises(ReplayAuthError) as err:
            make()
        msg = str(err.value)
        assert f"set w:{{{ns}}}:blob v" in msg and f"hset w:{{{ns}}}:blob f v" in msg, msg
        assert f"~w:{{{ns}}}:*" in msg  # the grant line has the missing pattern
    with pytest.raises(ReplayAuthError, match=r"needs \(get w:\{another-run\}:blob; set w:"):
        WeightStore(cfg, "another-run")  # a run's user is refused every other namespace


def test_no_script_commands_is_one_error_naming_the_command(server, admin, password_env):
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    _set_user(admin, [r for r in acl_rule_list(ns, PASSWORD) if r != "+script|load"])
    cfg = _cfg(_user_url(server.port), ns, password_env=password_env)
    with pytest.raises(ReplayAuthError) as err:
        ReplaySampler(cfg)
    msg = str(err.value)
    assert f"refused the ACL check to ACL user '{USER}': NOPERM" in msg
    assert "'script|load' command" in msg and f"ACL SETUSER {USER} ~rb:{{{ns}:*" in msg


def test_a_grant_taken_away_mid_run_is_one_error_not_a_retry_loop(server, admin, password_env):
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    _set_user(admin, acl_rule_list(ns, PASSWORD))
    cfg = _cfg(_user_url(server.port), ns, password_env=password_env)
    with ReplayWriter(cfg) as w:
        w.write(make_trajectory(0))
        _set_user(admin, ["-hincrby"])  # the insert script needs it
        t0 = time.monotonic()
        with pytest.raises(ReplayAuthError) as err:
            w.write(make_trajectory(1))
        assert time.monotonic() - t0 < FAST_S
    msg = str(err.value)
    assert f"refused an insert to ACL user '{USER}': NOPERM" in msg
    assert "script: " not in msg and f"ACL SETUSER {USER} ~rb:{{{ns}:*" in msg


def test_wrong_password_still_fails_as_credentials(server, admin):
    ns = f"acl-{uuid.uuid4().hex[:8]}"
    _set_user(admin, acl_rule_list(ns, PASSWORD))
    with pytest.raises(ReplayAuthError, match="refused the credentials"):
        ReplayWriter(_cfg(f"redis://{USER}:wrong@127.0.0.1:{server.port}/0", ns))


@pytest.mark.slow
def test_a_local_training_run_as_the_acl_user(server, admin, password_env, tiny_model_dir,
                                              tmp_path):
    from critic_unlearn.runtime.local import train_local
    from tests.integration.test_local_trainer import config
    from tests.unit._clip_fixtures import tiny_clip_folder

    ns = f"train-{uuid.uuid4().hex[:8]}"
    _set_user(admin, acl_rule_list(ns, PASSWORD))
    admin.execute_command("ACL", "LOG", "RESET")
    clip = tiny_clip_folder(tmp_path / "clip")

    def run(name: str):
        return train_local(config(
            tiny_model_dir, clip, tmp_path / "runs", f"replay.url={_user_url(server.port)}",
            f"replay.password_env={password_env}", f"replay.namespace={ns}",
            "learner.max_steps=1", "learner.checkpoint_every=100", f"runtime.run_name={name}"))

    r = run("granted")
    assert r.learner_steps == 2 and r.version == 1  # the critic warm-up, then one update
    assert _refusals(admin) == []
    assert admin.zcard(f"rb:{{{ns}:0}}:ver") >= 4  # the user's trajectories are there

    _set_user(admin, ["-evalsha"])
    with pytest.raises(ReplayAuthError, match=f"ACL user '{USER}'.*'evalsha' command"):
        run("refused")


# -- TLS -----------------------------------------------------------------------------------------
def _certificates(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    out: dict[str, Path] = {}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        out[f"{stem}_cert"] = d / f"{stem}.crt"
        out[f"{stem}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{stem}_key"] = d / f"{stem}.key"
        out[f"{stem}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def build(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()), critical=False))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = dict(content_commitment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)
    ca = (build("critic-unlearn test CA", ca_key, "critic-unlearn test CA", ca_key, True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                       key_cert_sign=True, crl_sign=True, **usage), critical=True)
          .sign(ca_key, hashes.SHA256()))
    save("ca", ca_key, ca)
    for stem, purpose in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                          ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (build(f"127.0.0.1 {stem}", key, "critic-unlearn test CA", ca_key, False)
                .add_extension(x509.SubjectAlternativeName([
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                    critical=False)
                .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                             key_cert_sign=False, crl_sign=False, **usage),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        save(stem, key, cert)
    return out


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int,
                                                                           dict[str, Path]]]:
    """A server on TLS only, asking clients for a certificate; (server, TLS port, PEM files)."""
    pytest.importorskip("cryptography", reason="the TLS test makes its certificates with it")
    try:
        find_server_binary()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    files = _certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    server = RedisServer(extra_args=(
        "--tls-port", str(port), "--tls-cert-file", str(files["server_cert"]),
        "--tls-key-file", str(files["server_key"]), "--tls-ca-cert-file", str(files["ca_cert"]),
        "--tls-auth-clients", "yes"))
    try:
        server.start()
    except RuntimeError as e:
        log = Path(server.data_dir, "redis.log")
        said = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        server.close()
        why = " ".join([str(e), *said]).split()  # a config error is on stderr, others logged
        if "tls" in " ".join(why).lower():
            pytest.skip(f"{server.binary} has no TLS (built without BUILD_TLS=yes): "
                        f"{' '.join(why)}")
        raise
    try:
        with redis.Redis(port=server.port) as admin:  # the plain port, once, then it closes
            _set_user(admin, acl_rule_list("tls-run", PASSWORD))
            admin.config_set("port", 0)
        yield server, port, files
    finally:
        server.close()


def test_tls_round_trip_as_the_acl_user(tls_server, password_env):
    server, port, f = tls_server
    with pytest.raises(ReplayConnectionError):  # the plain port is closed: TLS only
        check_reachable(_cfg(server.url, "tls-run"))
    cfg = _cfg(_user_url(port, "rediss"), "tls-run", password_env=password_env,
               tls_ca_file=f["ca_cert"], tls_cert_file=f["client_cert"],
               tls_key_file=f["client_key"])
    _round_trip(cfg)


def test_tls_without_the_ca_or_client_certificate_is_one_error(tls_server, password_env):
    _, port, f = tls_server
    url = _user_url(port, "rediss")
    for kw in ({}, {"tls_ca_file": f["ca_cert"]}):  # no CA; the CA but no client certificate
        t0 = time.monotonic()
        with pytest.raises(ReplayConnectionError) as err:
            check_reachable(_cfg(url, "tls-run", password_env=password_env, **kw))
        assert time.monotonic() - t0 < FAST_S
        msg = str(err.value)
        assert msg.startswith(f"TLS handshake with Redis at {url} failed (") and "\n" not in msg
        assert "set replay.tls_ca_file to the CA" in msg and "replay.tls_cert_file" in msg
    with pytest.raises(ReplayConnectionError):  # plain Redis protocol on the TLS port
        check_reachable(_cfg(f"redis://127.0.0.1:{port}/0", "tls-run"))


def test_tls_settings_are_checked_before_connecting(tmp_path):
    missing = tmp_path / "nope.pem"
    port = free_port()  # nothing listens: the settings fail first
    with pytest.raises(ValueError, match=rf"replay.tls_ca_file = '{missing}' is not a file on "):
        check_reachable(_cfg(f"rediss://127.0.0.1:{port}/0", "t", tls_ca_file=missing))
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    with pytest.raises(ValueError, match=r"replay.tls_ca_file is set but the URL "
                                         r"'redis://u:\*\*\*@127.0.0.1:\d+/0' is not TLS; use "):
        check_reachable(_cfg(f"redis://u:pw@127.0.0.1:{port}/0", "t", tls_ca_file=pem))
    with pytest.raises(ValueError, match="replay.tls_cert_file and replay.tls_key_file go "):
        check_reachable(_cfg(f"rediss://127.0.0.1:{port}/0", "t", tls_cert_file=pem))
