"""Config contract and CLI: bad config exits 2 with one line naming the key; secrets never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.core.config import ConfigError, config_warnings, load_config, masked, secret_bits
from tests.support.processes import free_port
from tests.support.proxy_harness import gateway_process

GOOD_ENV = {
    "GATEWAY_S3_ACCESS_KEY": "AKIDEXAMPLE",
    "GATEWAY_S3_SECRET_KEY": "very-secret-key-value",
    "GATEWAY_UPLOADS_TOKEN_SECRET": "token-secret-0123456789",
}
EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_example_config_documents_every_key_with_its_default() -> None:
    config = load_config(EXAMPLE, GOOD_ENV)
    documented = EXAMPLE.read_text()
    for section, values in masked(config).items():
        assert f"[{section}]" in documented
        for key in values:
            assert f"\n{key} = " in documented, f"{section}.{key} missing from the example"


def test_environment_wins_over_the_file_and_lists_are_comma_separated(tmp_path: Path) -> None:
    path = write(tmp_path, '[s3]\nregion = "eu-west-1"\naliases = ["http://a:9000"]\n')
    env = GOOD_ENV | {"GATEWAY_S3_REGION": "us-west-2", "GATEWAY_S3_ALIASES": "http://b:9000, https://c"}
    config = load_config(path, env)
    assert config.s3.region == "us-west-2"
    assert config.s3.aliases == ["http://b:9000", "https://c"]


def test_no_file_means_defaults_plus_environment() -> None:
    config = load_config(None, GOOD_ENV | {"GATEWAY_UPLOADS_PART_SIZE": "8388608", "GATEWAY_UPLOADS_MULTIPART": "no"})
    assert config.uploads.part_size == 8 * 1024 * 1024
    assert config.uploads.multipart is False
    assert config.server.listen == "127.0.0.1:8080"


def test_download_urls_outlive_a_pull_of_a_64_gib_image_at_10_mbit_s_and_stay_within_s3s_7_days() -> None:
    """Clients take every ranged GET of a pull from one URL and do not check the answers (docs/protocol.md §7.1)."""
    expiry = load_config(None, GOOD_ENV).downloads.url_expiry_seconds  # validated like any config
    assert expiry * 10_000_000 / 8 >= 64 * 1024**3
    assert expiry <= 7 * 24 * 3600
    assert f"\nurl_expiry_seconds = {expiry} " in EXAMPLE.read_text()


@pytest.mark.parametrize(
    ("toml", "env", "expected"),
    [
        ("", {"GATEWAY_UPLOADS_TOKEN_SECRET": ""}, "uploads.token_secret: required"),
        ("", {"GATEWAY_S3_SECRET_KEY": ""}, "s3.secret_key: required"),
        ('[upstream]\nurl = "registry:8000"\n', {}, "upstream.url: missing scheme"),
        ('[s3]\nexternal_endpoint = "minio.example.org:9000"\n', {}, "s3.external_endpoint: missing scheme"),
        ('[s3]\nexternal_endpoint = "http://minio/sub"\n', {}, "s3.external_endpoint: expected scheme://host"),
        ("[s3]\nbogus = 1\n", {}, "s3.bogus: unknown key"),
        ("[nope]\n", {}, "nope: unknown section"),
        ("", {"GATEWAY_UPLOADS_COLOUR": "red"}, "uploads.colour: unknown key"),
        ("[uploads]\npart_size = 0\n", {}, "uploads.part_size: must be within"),
        ("[uploads]\npart_size = 1048576\n", {}, "uploads.part_size: must be within"),
        ("[uploads]\npart_size = 5368709121\n", {}, "uploads.part_size: must be within"),
        ('[uploads]\npart_size = "big"\n', {}, "uploads.part_size: expected an integer"),
        ("", {"GATEWAY_UPLOADS_PART_SIZE": "big"}, "uploads.part_size: expected a number"),
        ('[uploads]\nmode = "copy"\n', {}, "uploads.mode: expected one of auto | adopt | relay"),
        ("[uploads]\nurl_expiry_seconds = 604801\n", {}, "uploads.url_expiry_seconds: must be within"),
        ("[downloads]\nurl_expiry_seconds = 604801\n", {}, "downloads.url_expiry_seconds: must be within"),
        ("[downloads]\nurl_expiry_seconds = 0\n", {}, "downloads.url_expiry_seconds: must be within"),
        ("[uploads]\ntoken_ttl_seconds = -1\n", {}, "uploads.token_ttl_seconds: must be positive"),
        ('[uploads]\nimage_id_pattern = "[0-9"\n', {}, "uploads.image_id_pattern: not a regular expression"),
        ('[uploads]\nimage_id_pattern = ""\n', {}, "uploads.image_id_pattern: must not be empty"),
        ('[server]\nlisten = "8080"\n', {}, "server.listen: expected host:port"),
        ("[server]\nheader_timeout_seconds = 0\n", {}, "server.header_timeout_seconds: must be positive"),
        ("[server]\nclient_write_timeout_seconds = -1\n", {}, "server.client_write_timeout_seconds: must be positive"),
        ("", {"GATEWAY_SERVER_MAX_CONNECTIONS": "0"}, "server.max_connections: must be positive"),
        ("[server]\nmax_connections = 1.5\n", {}, "server.max_connections: expected an integer"),
        ("", {"GATEWAY_S3_VERIFY_TLS": "maybe"}, "s3.verify_tls: expected true or false"),
        ('[s3]\nca_bundle = "/no/such/ca.pem"\n', {}, "s3.ca_bundle: no such file"),
        ("[server\n", {}, "invalid TOML"),
        # Always wrong (issue 13 point 8).
        (
            '[server]\npublic_url = "https://registry.example.org/?x=1"\n',
            {},
            "server.public_url: must not have a query",
        ),
        ('[server]\npublic_url = "https://registry.example.org?"\n', {}, "server.public_url: must not have a query"),
        (
            '[server]\npublic_url = "https://registry.example.org/#top"\n',
            {},
            "server.public_url: must not have a query",
        ),
        ("", {"GATEWAY_SERVER_PUBLIC_URL": "http://127.0.0.1:8000"}, "server.public_url: names the registry itself"),
        (
            '[server]\npublic_url = "http://Registry.example.org/library"\n'
            '[upstream]\nurl = "http://registry.example.org:80"\n',
            {},
            "server.public_url: names the registry itself",
        ),
        ("", {"GATEWAY_UPLOADS_TOKEN_SECRET": "x" * 32}, "uploads.token_secret: one character repeated"),
        ("", {"GATEWAY_UPLOADS_TOKEN_SECRET": "ab" * 16}, "uploads.token_secret: too little entropy"),
        ("", {"GATEWAY_UPLOADS_TOKEN_SECRET": "passwordpassword"}, "uploads.token_secret: too little entropy"),
        ("", {"GATEWAY_UPLOADS_TOKEN_SECRET": "changeme-" * 3}, "uploads.token_secret: too little entropy"),
        ("", {"GATEWAY_UPLOADS_TOKEN_SECRET": "a" * 15 + "b"}, "uploads.token_secret: too little entropy"),
        (
            "",
            {"GATEWAY_UPLOADS_TOKEN_SECRET": "very-secret-key-value"},
            "uploads.token_secret: equal to s3.secret_key",
        ),
        (
            "",
            {"GATEWAY_UPLOADS_PREVIOUS_TOKEN_SECRETS": "Zk3q9XbT2mWc7LpR, 1111111111111111"},
            "uploads.previous_token_secrets: one character repeated",
        ),
        (
            "",
            {"GATEWAY_UPLOADS_PREVIOUS_TOKEN_SECRETS": "very-secret-key-value"},
            "uploads.previous_token_secrets: equal to s3.secret_key",
        ),
    ],
)
def test_bad_config_is_refused_with_the_key_named(
    tmp_path: Path, toml: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected.replace("|", r"\|")):
        load_config(write(tmp_path, toml), GOOD_ENV | env)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=clean | env, capture_output=True, text=True, timeout=60
    )


def test_check_config_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    result = run_cli("check-config", "--config", str(write(tmp_path, '[upstream]\nurl = "nohost"\n')), env=GOOD_ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: upstream.url: missing scheme, expected http:// or https://, got 'nohost'"
    ]


def test_check_config_prints_the_effective_config_with_secrets_masked() -> None:
    result = run_cli("check-config", "--config", str(EXAMPLE), env=GOOD_ENV)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["s3"]["access_key"] == "AKIDEXAMPLE"
    assert printed["s3"]["secret_key"] == "***"
    assert printed["uploads"]["token_secret"] == "***"
    assert "very-secret-key-value" not in result.stdout
    assert "token-secret-0123456789" not in result.stdout


def test_serve_with_bad_config_exits_2_before_binding() -> None:
    result = run_cli("serve", env={"GATEWAY_S3_ACCESS_KEY": "x"})
    assert result.returncode == 2
    assert result.stderr.startswith("config error: s3.secret_key: required")


def test_serve_with_a_guessable_token_secret_exits_2_with_one_line_naming_the_key() -> None:
    result = run_cli("serve", env=GOOD_ENV | {"GATEWAY_UPLOADS_TOKEN_SECRET": "a" * 32})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: uploads.token_secret: one character repeated; use 32 random bytes (docs/configuration.md)"
    ]


def test_version_flag_prints_the_package_version() -> None:
    result = run_cli("--version", env={})
    assert result.returncode == 0
    assert result.stdout.strip() == "signing-gateway 0.1.0"


def test_presign_explain_prints_url_canonical_request_and_string_to_sign(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (GOOD_ENV | {"GATEWAY_S3_EXTERNAL_ENDPOINT": "https://minio.example.org"}).items():
        monkeypatch.setenv(name, value)
    sha = "6ab72eeb9e77b07540897e0c8d6d23ec8eef0f8c3a47e1b3f4e93443d9536bed"
    code = main(
        [
            "presign",
            "put",
            "sregistry",
            "c/n:sha256.x",
            "--part",
            "3",
            "--upload-id",
            "u1",
            "--sha256",
            sha,
            "--explain",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    url = out.splitlines()[0]
    assert url.startswith("https://minio.example.org/sregistry/c/n%3Asha256.x?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert f"X-Amz-Content-Sha256={sha}" in url and "partNumber=3" in url and "uploadId=u1" in url
    assert "\nhost:minio.example.org\n" in out  # default port omitted from the signed Host
    assert out.count(sha) >= 3  # URL, canonical payload hash, the header to send
    assert "AWS4-HMAC-SHA256\n" in out


def test_presign_refuses_a_sha256_that_is_not_lowercase_hex(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in GOOD_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["presign", "PUT", "b", "k", "--sha256", "ABC"]) == 2
    assert "--sha256" in capsys.readouterr().err


@pytest.mark.parametrize(
    "secret",
    ["3f9a0c1be27d4865", "0123456789abcdef", "4407158293364801", "Zk3q9XbT2mWc7LpR", "token-secret-0123456789"],
)
def test_random_looking_token_secrets_of_16_characters_are_accepted(secret: str) -> None:
    assert load_config(None, GOOD_ENV | {"GATEWAY_UPLOADS_TOKEN_SECRET": secret}).uploads.token_secret == secret
    assert secret_bits(secret) >= 32


def test_risky_settings_are_warned_about_one_line_each_naming_the_key() -> None:
    risky = load_config(None, GOOD_ENV | {"GATEWAY_SERVER_PUBLIC_URL": "http://registry.example.org"})
    warnings = config_warnings(risky)  # the defaults: internal and external endpoint both http://127.0.0.1:9000
    assert [warning.split(":", 1)[0] for warning in warnings] == ["server.public_url", "s3.external_endpoint"]
    assert all("\n" not in warning for warning in warnings)
    safe = load_config(
        None,
        GOOD_ENV
        | {
            "GATEWAY_SERVER_PUBLIC_URL": "https://registry.example.org",
            "GATEWAY_S3_EXTERNAL_ENDPOINT": "https://s3.example.org",
        },
    )
    assert config_warnings(safe) == []


async def test_serve_logs_each_risky_setting_once_at_start(tmp_path: Path) -> None:
    # gateway_environment: public_url http://127.0.0.1:<port>, both S3 endpoints http://127.0.0.1:9.
    async with gateway_process(f"http://127.0.0.1:{free_port()}", tmp_path) as gateway:
        logged = [json.loads(line) for line in gateway.log_path.read_text().splitlines() if line.startswith("{")]
    warned = [line["message"] for line in logged if line.get("event") == "config-warning"]
    assert len(warned) == 2
    assert warned[0].startswith("risky configuration: server.public_url: http://")
    assert warned[1].startswith("risky configuration: s3.external_endpoint: equal to s3.internal_endpoint")
