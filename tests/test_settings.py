"""Settings: read from the environment, typed, and documented in the README as they are in code."""

from __future__ import annotations

import pytest

from devstack.stack import ROOT
from k8scost.settings import (
    ExporterSettings,
    IngressSettings,
    LedgerSettings,
    RightsizingSettings,
    SettingsError,
    from_env,
    settings_table,
)
from k8scost.usage_sizing import Recommender


def test_values_are_read_and_typed() -> None:
    settings = from_env(ExporterSettings, {"SCRAPE_INTERVAL": "15", "EXPORTER_PORT": "9100", "CLUSTER_NAME": "eu"})
    assert (settings.scrape_interval, settings.listen_port, settings.cluster_name) == (15.0, 9100, "eu")
    assert from_env(ExporterSettings, {}).scrape_interval == 60.0
    assert from_env(IngressSettings, {"INGRESS_MAX_BODY_BYTES": "5"}, max_body_bytes=7).max_body_bytes == 7


@pytest.mark.parametrize(("env", "value"), [("EXPORTER_PORT", "nineteen"), ("SCRAPE_INTERVAL", "1m")])
def test_a_bad_value_names_its_variable(env: str, value: str) -> None:
    with pytest.raises(SettingsError, match=env):
        from_env(ExporterSettings, {env: value})


def test_ledger_mode_is_one_of_two() -> None:
    assert from_env(LedgerSettings, {}).mode == "incremental"
    assert from_env(LedgerSettings, {"LEDGER_MODE": "full"}).mode == "full"
    with pytest.raises(SettingsError, match="LEDGER_MODE"):
        from_env(LedgerSettings, {"LEDGER_MODE": "hourly"})


def test_readme_documents_every_setting_as_the_code_has_it() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [row for row in settings_table().splitlines()[2:] if row not in readme]
    assert not missing, "README settings table is stale; regenerate with `python -m k8scost.settings`:\n" + "\n".join(missing)


def test_the_rightsizing_recommender_names_a_recommender_and_documents_each() -> None:
    assert Recommender(from_env(RightsizingSettings, {}).recommender) is Recommender.VPA
    chosen = from_env(RightsizingSettings, {"RIGHTSIZING_RECOMMENDER": "request-sizing-v2"}).recommender
    assert Recommender(chosen) is Recommender.REQUEST_SIZING_V2
    doc = RightsizingSettings.__dataclass_fields__["recommender"].metadata["doc"]
    assert [r for r in Recommender if f"`{r}`" not in doc] == []


def test_the_series_limit_settings_are_read_and_typed() -> None:
    settings = from_env(IngressSettings, {"INGRESS_MAX_SERIES_PER_TENANT": "42", "INGRESS_ACTIVE_SERIES_SECONDS": "90"})
    assert (settings.max_series_per_tenant, settings.active_series_seconds) == (42, 90.0)
    defaults = from_env(IngressSettings, {})
    assert (defaults.max_series_per_tenant, defaults.active_series_seconds) == (150_000, 1200.0)
    with pytest.raises(SettingsError, match="INGRESS_MAX_SERIES_PER_TENANT"):
        from_env(IngressSettings, {"INGRESS_MAX_SERIES_PER_TENANT": "many"})


def test_the_start_spread_is_read_and_never_negative() -> None:
    assert from_env(LedgerSettings, {}).start_spread_seconds == 60.0
    assert from_env(LedgerSettings, {"LEDGER_START_SPREAD_SECONDS": "0"}).start_spread_seconds == 0.0
    with pytest.raises(SettingsError, match="LEDGER_START_SPREAD_SECONDS"):
        from_env(LedgerSettings, {"LEDGER_START_SPREAD_SECONDS": "-1"})
