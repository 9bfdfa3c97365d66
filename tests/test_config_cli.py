"""Config contract and CLI: bad config exits 2 with one line naming the key; secrets never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import ConfigError, load_config, masked

GOOD_ENV = {
    "GATEWAY_S3_ACCESS_KEY": "AKIDEXAMPLE",
    "GATEWAY_S3_SECRET_KEY": "very-secret-key-value",
    "GATEWAY_UPLOADS_TOKEN_SECRET": "token-secret-0123456789",
}
EXAMPLE = Path(__file__).parent.parent / "config" / "gateway.example.toml"


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
