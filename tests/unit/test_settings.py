from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from voxmesh.core.settings import SettingsError, load_settings


def test_defaults_load_and_are_frozen() -> None:
    settings = load_settings(environ={})
    assert settings.host == "127.0.0.1"
    assert settings.router.port == 17001
    assert settings.run_dir.is_absolute()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.host = "0.0.0.0"  # type: ignore[misc]


def test_layers_file_then_environment_then_overrides(tmp_path: Path) -> None:
    extra = tmp_path / "extra.toml"
    extra.write_text(
        "[router]\nport = 7100\nmetrics_port = 7101\n[limits]\nmax_chunk_bytes = 1000\n"
    )
    settings = load_settings(
        extra,
        environ={
            "VOXMESH__ROUTER__PORT": "7200",
            "VOXMESH__ENVOY__CORS_ALLOW_ORIGIN_REGEX": '["x"]',
        },
        overrides={"limits": {"max_text_bytes": 10}},
    )
    assert settings.router.port == 7200  # environment beats the file
    assert settings.router.metrics_port == 7101  # the file beats defaults
    assert settings.limits.max_chunk_bytes == 1000
    assert settings.limits.max_text_bytes == 10
    assert settings.envoy.cors_allow_origin_regex == ("x",)


def test_json_settings_file_round_trips(tmp_path: Path) -> None:
    import json

    import pydantic

    from voxmesh.core.settings import Settings

    original = load_settings(environ={}, overrides={"router": {"port": 7300}})
    dumped = tmp_path / "settings.json"
    dumped.write_text(json.dumps(pydantic.TypeAdapter(Settings).dump_python(original, mode="json")))
    assert load_settings(dumped, environ={}) == original


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"VOXMESH__ROUTER__PORT": "not-a-number"}, "router.port"),
        ({"VOXMESH__ROUTER__PORT": "70000"}, "router.port"),
        ({"VOXMESH__LIMITS__MAX_CHUNK_BYTES": "0"}, "limits.max_chunk_bytes"),
        ({"VOXMESH__ROUTER__NO_SUCH_KEY": "1"}, "router.no_such_key"),
        ({"VOXMESH__LOG__LEVEL": "loud"}, "log.level"),
    ],
)
def test_invalid_values_name_the_key(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=environ)
    assert fragment in str(caught.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_plaintext_client_ports_only_in_local() -> None:
    production = {
        "VOXMESH__ENVIRONMENT": "prod",
        "VOXMESH__AUTH__PROVIDER": "oidc",
        "VOXMESH__AUTH__ISSUER": "https://securetoken.google.com/voxmesh-prod",
        "VOXMESH__AUTH__AUDIENCE": "voxmesh-prod",
    }
    assert load_settings(environ=production).tls.client_plaintext is False
    with pytest.raises(SettingsError, match=r"tls\.client_plaintext"):
        load_settings(environ={**production, "VOXMESH__TLS__CLIENT_PLAINTEXT": "true"})
    assert load_settings(environ={"VOXMESH__TLS__CLIENT_PLAINTEXT": "true"}).tls.client_plaintext
