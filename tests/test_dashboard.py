"""The dashboard (Serve app ``dashboard`` at ``/``) in headless Debian Chromium, against the real REST API.

An organization is signed up through the REST API and its ledger seeded directly
(ClickHouse expenses, MongoDB resources); then a person's path through the page: sign in,
pick a namespace, read the chart's total and the pod table. Every figure read on the page
must be the API's answer to the very query the page sent (the raw value in ``data-value``
but for a float sum's last bits, see ``same_sum``; the text that value with two decimals), and the API's answer must be the
independent sum of the seeded rows. A screenshot is saved in ``.data/artifacts/``.

A second organization's ledger is written by the tenant actor from a simulated history
(a cluster billed a management fee, one billed none): on the page, its daily cost by
namespace and its clusters compared must be one figure, the REST API's sum of the clusters.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import ray

from devstack import stack
from k8scost import raylocal
from k8scost import ledger
from k8scost.settings import StoreSettings, from_env
from devstack.simulator.history import write_blocks
from devstack.simulator.model import cluster_management_cost
from k8scost.stores.clickhouse import ExpenseRow, ExpenseStore
from k8scost.stores.mongo import connect
from k8scost.stores.optimizations import Module, OptimizationStore
from k8scost.stores.optimizations import item as optimization_item
from k8scost.stores.resources import RESOURCE_TYPES, Kind, Resource, ResourceStore
from tests import helpers
from tests.test_ledger import config, ledger_estate

pytestmark = pytest.mark.services

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = helpers.ROOT / ".data" / "artifacts"
API = f"{helpers.SERVE_URL}/restapi/v2"
DAY = 86_400
POD, NAMESPACE, NODE, CLUSTER = (RESOURCE_TYPES[k] for k in (Kind.POD, Kind.NAMESPACE, Kind.NODE, Kind.CLUSTER))
WAIT_SECONDS = 30

# account name → its clusters; each cluster runs the same namespaces and pods.
ESTATE = {"prod": ("prod-eu", "prod-us"), "staging": ("staging-1",)}
PODS = {  # namespace → (pod, node, controller)
    "shop": (("shop-web-7d9f-a", "node-a", "shop-web"), ("shop-web-7d9f-b", "node-b", "shop-web"),
             ("shop-cart-0", "node-b", "shop-cart")),
    "payments": (("payments-api-5c-x", "node-a", "payments-api"),),
}
IDLE = "__idle__"


def money(value: float) -> str:
    """What the page shows for ``value``: the exact binary value, two decimals, halves up (Intl's halfExpand)."""
    return f"${Decimal(value).quantize(Decimal('0.01'), ROUND_HALF_UP):,}"


def utc_day(moment: float) -> int:
    return int(moment) // DAY * DAY


# ---- seeding --------------------------------------------------------------------------------


@dataclass
class Tenant:
    email: str
    password: str
    organization_name: str
    organization_id: str
    token: str
    accounts: dict[str, str]  # name → cloud account id
    rows: list[ExpenseRow]  # everything written to the ledger, corrections included


def call(method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{API}{path}", headers=headers, timeout=30, **kwargs)


def ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, f"{answer.request.method} {answer.request.url}: {answer.status_code} {answer.text}"
    return answer.json()


def ledger_rows(accounts: dict[str, str], days: list[int], rng: random.Random) -> tuple[list[ExpenseRow], list[ExpenseRow]]:
    """Two INSERTs' worth of rows: the day costs of every resource, then one correction.

    Costs nest as the tenant actor writes them: a namespace costs its pods, a node its pods
    plus idle capacity, a cluster its namespaces (idle included) plus a management fee.
    """
    first: list[ExpenseRow] = []
    for account_name, clusters in ESTATE.items():
        account = accounts[account_name]
        for cluster in clusters:
            for day in days:
                date = datetime.fromtimestamp(day, UTC)

                def row(resource: Resource, cost: float) -> ExpenseRow:
                    return ExpenseRow(account, resource.id(account), date, cost, 1, resource.cluster, resource.namespace,
                                      resource.node, resource.service, RESOURCE_TYPES[resource.kind], resource.name)

                node_costs: dict[str, float] = {}
                cluster_cost = 0.0
                for namespace, pods in PODS.items():
                    namespace_cost = 0.0
                    for pod, node, controller in pods:
                        cost = rng.uniform(0.05, 9.0)
                        first.append(row(Resource(Kind.POD, cluster, namespace, pod, node, controller), cost))
                        namespace_cost += cost
                        node_costs[node] = node_costs.get(node, 0.0) + cost
                    first.append(row(Resource(Kind.NAMESPACE, cluster, namespace, namespace), namespace_cost))
                    cluster_cost += namespace_cost
                idle = rng.uniform(0.5, 3.0)
                first.append(row(Resource(Kind.NAMESPACE, cluster, IDLE, IDLE), idle))
                for node, cost in node_costs.items():
                    first.append(row(Resource(Kind.NODE, cluster, None, node, node=node), cost + idle / len(node_costs)))
                first.append(row(Resource(Kind.CLUSTER, cluster, None, cluster), cluster_cost + idle + 0.1))
    # A correction, as the tenant actor writes one: a pod's cost grew, and so did its
    # namespace's, node's and cluster's; each live row again with −1, then the new +1.
    pod = next(r for r in first if r.resource_type == POD and r.k8s_namespace == "shop" and r.date.timestamp() == max(days))
    grown = rng.uniform(1.0, 2.0)
    correction = []
    for before in first:
        if before.cloud_account_id != pod.cloud_account_id or before.date != pod.date or before.k8s_cluster != pod.k8s_cluster:
            continue
        if (before == pod or (before.resource_type == NAMESPACE and before.k8s_namespace == pod.k8s_namespace)
                or (before.resource_type == NODE and before.k8s_node == pod.k8s_node) or before.resource_type == CLUSTER):
            correction += [before._replace(sign=-1), before._replace(cost=before.cost + grown)]
    assert len(correction) == 8
    return first, correction


def resources_of(rows: list[ExpenseRow]) -> dict[str, list[Resource]]:
    kinds = {v: k for k, v in RESOURCE_TYPES.items()}
    found: dict[str, dict[str, Resource]] = {}
    for r in rows:
        resource = Resource(kinds[r.resource_type], r.k8s_cluster, r.k8s_namespace, r.resource_name, r.k8s_node, r.k8s_service)
        found.setdefault(r.cloud_account_id, {})[r.resource_id] = resource
    return {account: list(resources.values()) for account, resources in found.items()}


async def write_ledger(organization_id: str, inserts: list[list[ExpenseRow]], first_seen: int, last_seen: int) -> None:
    settings = from_env(StoreSettings)
    expenses = ExpenseStore(settings)
    try:
        await expenses.migrate()
        for rows in inserts:
            await expenses.insert(rows)
    finally:
        await expenses.close()
    resources = ResourceStore(connect(settings))
    for account, found in resources_of(inserts[0]).items():
        await resources.upsert(account, organization_id, found, first_seen, last_seen)


@pytest.fixture(scope="module")
def tenant(serve_apps: str) -> Tenant:
    marker = uuid.uuid4().hex[:8]
    email, password, org_name = f"dash-{marker}@example.com", f"pw-{uuid.uuid4().hex}", f"Dashboard Co {marker}"
    signed = ok(call("POST", "/signup", json={
        "organization_name": org_name, "email": email, "password": password, "display_name": "Dana Board",
    }), 201)
    token, organization_id = signed["token"], signed["organization_id"]
    accounts = {}
    for name in ESTATE:
        created = ok(call("POST", f"/organizations/{organization_id}/cloud_accounts", token,
                          json={"name": f"{name}-{marker}", "type": "kubernetes_cnr"}), 201)
        accounts[name] = created["id"]
    today = utc_day(time.time())
    # Three days in the page's default range (the last 30 days) and one in the 30 before it.
    days = [today - 2 * DAY, today - DAY, today, today - 40 * DAY]
    first, correction = ledger_rows(accounts, days, random.Random(marker))
    asyncio.run(write_ledger(organization_id, [first, correction], min(days), today + DAY - 1))
    return Tenant(email, password, org_name, organization_id, token, accounts, first + correction)


def expected_costs(rows: list[ExpenseRow], resource_type: str, start: int, end: int,
                   filters: dict[str, list[str]], by: str) -> dict[str, float]:
    """Value of ``by`` → the summed live cost of ``resource_type`` rows of days in [start, end) matching ``filters``."""
    sums: dict[str, float] = {}
    for r in rows:
        day = int(r.date.timestamp())
        if r.resource_type != resource_type or not start <= day < end:
            continue
        if any(str(getattr(r, column)) not in values for column, values in filters.items()):
            continue
        key = getattr(r, by) or ""
        sums[key] = sums.get(key, 0.0) + r.cost * r.sign
    return sums


# ---- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: scripts/setup.sh installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,2200", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, what: str, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition, f"timed out waiting for {what}")


def attribute(driver: Any, element_id: str, name: str) -> str | None:
    return driver.find_element("id", element_id).get_attribute(name)


def same_sum(shown_value: float, answered: float) -> bool:
    """Whether the page shows the sum the API answers when asked again: ClickHouse adds a sum's
    parts in the order its threads finish, so the same sum asked twice may differ in its last bits."""
    return shown_value == pytest.approx(answered, rel=1e-12)


def shown(driver: Any, element_id: str) -> tuple[str, float]:
    """An element's text and its raw ``data-value``."""
    element = driver.find_element("id", element_id)
    return element.text, float(element.get_attribute("data-value"))


def page_query(driver: Any, section: str, which: str = "data-query") -> list[tuple[str, str]]:
    """The query string the page sent for ``section`` (``data-previous-query``: its previous
    period's), as (name, value) pairs."""
    return parse_qsl(attribute(driver, section, which) or "", keep_blank_values=True)


def fresh_page(driver: Any) -> None:
    """The dashboard, signed out: the session lives in the tab's sessionStorage."""
    driver.get(f"{helpers.SERVE_URL}/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{helpers.SERVE_URL}/")


def sign_in(driver: Any, email: str, password: str) -> None:
    fresh_page(driver)
    wait(driver, "the sign-in form", lambda d: d.find_element("id", "signin-email").is_displayed())
    driver.find_element("id", "signin-email").send_keys(email)
    driver.find_element("id", "signin-password").send_keys(password)
    driver.find_element("id", "signin-submit").click()
    wait(driver, "the dashboard", lambda d: attribute(d, "dashboard", "data-state") == "ready")


def table(driver: Any, table_id: str) -> list[dict[str, str]]:
    """The rows of a table: their data-* attributes, and each cell's text by data-field."""
    return driver.execute_script(
        """return [...document.getElementById(arguments[0]).tBodies[0].rows].map((row) => {
             const cells = Object.fromEntries([...row.cells].map((c, i) => [c.dataset.field ?? String(i), c.textContent]));
             return {...row.dataset, cells};
           });""",
        table_id,
    )


def severe_console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def assert_previous_period_is_the_apis(driver: Any, section: str, tenant: Tenant, answer: dict[str, Any]) -> None:
    """The days the page counts for ``section``'s previous period come from a query over
    exactly the period the API compares with: same filters, the API's range, the same total."""
    query, previous_query = page_query(driver, section), page_query(driver, section, "data-previous-query")
    ranges = ("start_date", "end_date")
    assert [p for p in previous_query if p[0] not in ranges] == [p for p in query if p[0] not in ranges]
    assert (int(dict(previous_query)["start_date"]), int(dict(previous_query)["end_date"])) == (
        answer["previous_range_start"], answer["start_date"] - 1)
    previous = ok(call("GET", f"/organizations/{tenant.organization_id}/breakdown_expenses", tenant.token,
                       params=previous_query))
    assert previous["total"] == pytest.approx(answer["previous_total"], rel=1e-9)


def set_range(driver: Any, first_day: int, last_day: int) -> None:
    """From and To as a person picks them (a change event each); waits for the new figures."""
    driver.execute_script(
        """for (const [id, value] of [["start-date", arguments[0]], ["end-date", arguments[1]]]) {
             const input = document.getElementById(id);
             input.value = value;
             input.dispatchEvent(new Event("change"));
           }""",
        *(datetime.fromtimestamp(day, UTC).date().isoformat() for day in (first_day, last_day)),
    )
    wanted = {("start_date", str(first_day)), ("end_date", str(last_day + DAY - 1))}
    wait(driver, "the new range's figures", lambda d: wanted <= set(page_query(d, "trend"))
         and wanted <= set(page_query(d, "comparison")) and attribute(d, "dashboard", "data-state") == "ready")


# ---- tests ----------------------------------------------------------------------------------


def test_the_app_serves_the_page_and_the_chart_library(serve_apps: str) -> None:
    page = httpx.get(f"{serve_apps}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="vendor/chart.js"' in page.text and 'src="app.js"' in page.text
    library = httpx.get(f"{serve_apps}/vendor/chart.js", timeout=10)
    assert library.status_code == 200 and library.headers["content-type"].startswith("text/javascript")
    assert (helpers.ROOT / "serve_apps/dashboard/node_modules/chart.js/dist/chart.umd.js").read_bytes() == library.content
    again = httpx.get(f"{serve_apps}/app.js", headers={"If-None-Match": httpx.get(f"{serve_apps}/app.js").headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{serve_apps}/../pyproject.toml", timeout=10).status_code == 404
    assert httpx.get(f"{serve_apps}/static/app.js", timeout=10).status_code == 404
    assert httpx.post(f"{serve_apps}/", timeout=10).status_code == 405


def test_a_namespace_costs_on_the_page_what_the_api_answers(browser: Any, tenant: Tenant) -> None:
    from selenium.webdriver.support.ui import Select

    org = f"/organizations/{tenant.organization_id}"
    sign_in(browser, tenant.email, tenant.password)
    assert browser.find_element("id", "org-name").text == tenant.organization_name
    assert not browser.find_element("id", "org-picker").is_displayed()  # one organization: no picker

    # The filter offers what available_filters answers for the page's range.
    start, end = (int(v) for _, v in page_query(browser, "filters"))
    assert end - start == 30 * DAY - 1 and end == utc_day(time.time()) + DAY - 1  # the last 30 days, today included
    filters = ok(call("GET", f"{org}/available_filters", tenant.token, params={"start_date": start, "end_date": end}))
    namespace_select = Select(browser.find_element("id", "filter-k8s_namespace"))
    offered = [o.get_attribute("value") for o in namespace_select.options]
    assert offered == ["", *filters["filter_values"]["k8s_namespace"]]
    assert {"shop", "payments", IDLE} <= set(offered)

    namespace_select.select_by_value("shop")
    wait(browser, "the shop namespace's figures", lambda d: (
        ("k8s_namespace", "shop") in page_query(d, "trend") and ("k8s_namespace", "shop") in page_query(d, "pods")
        and attribute(d, "dashboard", "data-state") == "ready"
    ))

    # The chart's total: the API's answer to the page's own query, and the seeded sum.
    trend_query = page_query(browser, "trend")
    assert ("breakdown_by", "k8s_namespace") in trend_query and ("resource_type", NAMESPACE) in trend_query
    breakdown = ok(call("GET", f"{org}/breakdown_expenses", tenant.token, params=trend_query))
    text, value = shown(browser, "chart-total")
    assert same_sum(value, breakdown["total"]) and text == money(breakdown["total"])
    independent = expected_costs(tenant.rows, NAMESPACE, start, end + 1, {"k8s_namespace": ["shop"]}, "k8s_namespace")
    assert breakdown["total"] == pytest.approx(independent["shop"], rel=1e-9) and breakdown["total"] > 0
    text, value = shown(browser, "chart-previous-total")
    assert same_sum(value, breakdown["previous_total"]) and text == money(breakdown["previous_total"])
    previous_first_day = utc_day(breakdown["previous_range_start"])  # ledger days are whole days
    previous = expected_costs(tenant.rows, NAMESPACE, previous_first_day, start,
                              {"k8s_namespace": ["shop"]}, "k8s_namespace")
    assert breakdown["previous_total"] == pytest.approx(previous["shop"], rel=1e-9) and breakdown["previous_total"] > 0
    # 3 days of data now, 1 of the 30 before: no percentage, which would measure the missing days.
    assert_previous_period_is_the_apis(browser, "trend", tenant, breakdown)
    assert browser.find_element("id", "chart-change").text == "previous period incomplete: 1 of 30 days have data"
    [shop_row] = table(browser, "breakdown-table")
    assert shop_row["key"] == "shop" and shop_row["cells"]["1"] == money(breakdown["counts"]["shop"]["total"])

    # The pod table: every row as clean_expenses answers the page's query, costliest first.
    pods_query = page_query(browser, "pods")
    assert ("resource_type", POD) in pods_query
    clean = ok(call("GET", f"{org}/clean_expenses", tenant.token, params=pods_query))
    rows = table(browser, "pod-table")
    assert [r["resourceId"] for r in rows] == [e["resource_id"] for e in clean["clean_expenses"]]
    assert len(rows) == clean["total_count"] == len(PODS["shop"]) * sum(len(c) for c in ESTATE.values())
    for row, expense in zip(rows, clean["clean_expenses"]):
        assert same_sum(float(row["cost"]), expense["cost"]) and row["cells"]["cost"] == money(expense["cost"])
        assert row["name"] == expense["resource_name"] and row["cells"]["k8s_namespace"] == "shop"
    pod_costs = {}
    for r in tenant.rows:
        if r.resource_type == POD and r.k8s_namespace == "shop" and start <= r.date.timestamp() <= end:
            pod_costs[r.resource_id] = pod_costs.get(r.resource_id, 0.0) + r.cost * r.sign
    assert {e["resource_id"]: e["cost"] for e in clean["clean_expenses"]} == pytest.approx(pod_costs, rel=1e-9)
    assert [float(r["cost"]) for r in rows] == sorted((float(r["cost"]) for r in rows), reverse=True)
    top = browser.find_element("css selector", "#pod-table tbody tr")
    first = clean["clean_expenses"][0]
    assert top.text.split() == [first["resource_name"], "shop", first["k8s_cluster"], first["k8s_node"],
                                first["k8s_service"], money(first["cost"])]
    text, value = shown(browser, "pod-total")
    assert same_sum(value, clean["total_cost"]) and text == money(clean["total_cost"])

    browser.find_element("id", "sort-name").click()
    names = [r["name"] for r in table(browser, "pod-table")]
    assert names == sorted(names) and len(names) == len(rows)

    # The clusters compared: the shop namespace in each cluster, now and in the period before.
    comparison_query = page_query(browser, "comparison")
    assert ("breakdown_by", "k8s_cluster") in comparison_query
    by_cluster = ok(call("GET", f"{org}/breakdown_expenses", tenant.token, params=comparison_query))
    compared = {r["key"]: r["cells"] for r in table(browser, "comparison-table")}
    assert set(compared) == {c for clusters in ESTATE.values() for c in clusters} == set(by_cluster["counts"])
    independent = expected_costs(tenant.rows, NAMESPACE, start, end + 1, {"k8s_namespace": ["shop"]}, "k8s_cluster")
    for cluster, cells in compared.items():
        counts = by_cluster["counts"][cluster]
        assert cells["1"] == money(counts["total"]) and cells["2"] == money(counts["previous_total"])
        assert counts["total"] == pytest.approx(independent[cluster], rel=1e-9)
        assert cells["change"] == "previous period incomplete: 1 of 30 days have data"
    text, value = shown(browser, "comparison-total")
    assert same_sum(value, by_cluster["total"]) and text == money(by_cluster["total"])
    text, value = shown(browser, "comparison-previous-total")
    assert same_sum(value, by_cluster["previous_total"]) and text == money(by_cluster["previous_total"])
    assert_previous_period_is_the_apis(browser, "comparison", tenant, by_cluster)
    assert browser.find_element("id", "comparison-change").text == "previous period incomplete: 1 of 30 days have data"
    assert browser.find_element("id", "comparison-coverage").text.startswith(
        "Days with data: 3 of 30 in this period, 1 of 30 in the previous one (")

    browser.find_element("id", "sort-cost").click()  # back to costliest first for the picture
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"dashboard screenshot: {screenshot}")
    assert severe_console_errors(browser) == []


def test_stacking_by_cluster_sums_whole_clusters(browser: Any, tenant: Tenant) -> None:
    from selenium.webdriver.support.ui import Select

    sign_in(browser, tenant.email, tenant.password)  # a fresh page: no filter set
    Select(browser.find_element("id", "breakdown-by")).select_by_value("k8s_cluster")
    wait(browser, "the breakdown by cluster", lambda d: ("breakdown_by", "k8s_cluster") in page_query(d, "trend")
         and attribute(d, "dashboard", "data-state") == "ready")
    query = page_query(browser, "trend")
    assert ("resource_type", CLUSTER) in query and not any(name.startswith("k8s_") for name, _ in query)
    breakdown = ok(call("GET", f"/organizations/{tenant.organization_id}/breakdown_expenses", tenant.token, params=query))
    text, value = shown(browser, "chart-total")
    assert same_sum(value, breakdown["total"]) and text == money(breakdown["total"])
    start, end = int(dict(query)["start_date"]), int(dict(query)["end_date"])
    independent = expected_costs(tenant.rows, CLUSTER, start, end + 1, {}, "k8s_cluster")
    assert breakdown["total"] == pytest.approx(sum(independent.values()), rel=1e-9)
    shown_rows = {r["key"]: r["cells"]["1"] for r in table(browser, "breakdown-table")}
    assert shown_rows == {cluster: money(c["total"]) for cluster, c in breakdown["counts"].items()}
    assert set(shown_rows) == set(independent)


def test_a_change_is_a_percentage_only_over_a_previous_period_as_complete(browser: Any, tenant: Tenant) -> None:
    """Seeded days: today, the 2 days before, and 40 days ago."""
    org = f"/organizations/{tenant.organization_id}"
    sign_in(browser, tenant.email, tenant.password)
    today = utc_day(time.time())

    # Today against yesterday: both have data, so the change is the API's totals' percentage.
    set_range(browser, today, today)
    for section, total_id in (("trend", "chart"), ("comparison", "comparison")):
        answer = ok(call("GET", f"{org}/breakdown_expenses", tenant.token, params=page_query(browser, section)))
        assert answer["previous_total"] > 0
        change = browser.find_element("id", f"{total_id}-change")
        assert change.text == f"{(answer['total'] - answer['previous_total']) / answer['previous_total'] * 100:+.1f} %"
        assert (change.get_attribute("data-current-days"), change.get_attribute("data-previous-days")) == ("1", "1")
    by_cluster = ok(call("GET", f"{org}/breakdown_expenses", tenant.token, params=page_query(browser, "comparison")))
    rows = table(browser, "comparison-table")
    assert {r["key"] for r in rows} == set(by_cluster["counts"]) and len(rows) == 3
    for row in rows:
        counts = by_cluster["counts"][row["key"]]
        assert row["cells"]["change"] == f"{(counts['total'] - counts['previous_total']) / counts['previous_total'] * 100:+.1f} %"

    # Yesterday and today against the 2 days before: only one of those has data.
    set_range(browser, today - DAY, today)
    incomplete = "previous period incomplete: 1 of 2 days have data"
    assert browser.find_element("id", "chart-change").text == incomplete
    assert browser.find_element("id", "comparison-change").text == incomplete
    assert [r["cells"]["change"] for r in table(browser, "comparison-table")] == [incomplete] * 3
    assert severe_console_errors(browser) == []


def test_the_costs_tab_is_one_of_four_and_one_is_open_at_a_time(browser: Any, tenant: Tenant) -> None:
    costs, rightsizing, live = ("filters", "trend", "comparison", "pods", "onboarding"), ("filters", "rightsizing"), ("live",)
    recommendations = ("recommendations",)
    browser.get_log("browser")  # the earlier tests' entries: only this test's count

    def showing(tab: str, sections: tuple[str, ...]) -> None:
        pressed = {name: attribute(browser, f"tab-{name}", "aria-pressed")
                   for name in ("costs", "rightsizing", "recommendations", "live")}
        assert pressed == {name: str(name == tab).lower() for name in pressed}
        visible = {id_ for id_ in {*costs, *rightsizing, *recommendations, *live} if browser.find_element("id", id_).is_displayed()}
        assert visible == set(sections), tab

    sign_in(browser, tenant.email, tenant.password)
    assert browser.find_element("id", "tab-costs").text == "Costs"
    showing("costs", costs)
    for tab, sections in (("rightsizing", rightsizing), ("recommendations", recommendations), ("live", live),
                          ("costs", costs), ("recommendations", recommendations), ("live", live)):
        browser.find_element("id", f"tab-{tab}").click()
        showing(tab, sections)
    browser.find_element("id", "tab-live").click()  # the open tab again: back to the costs
    showing("costs", costs)
    browser.find_element("id", "tab-rightsizing").click()
    browser.find_element("id", "signout").click()
    wait(browser, "the sign-in form", lambda d: d.find_element("id", "signin-form").is_displayed())
    for element_id, value in (("signin-email", tenant.email), ("signin-password", tenant.password)):
        field = browser.find_element("id", element_id)  # the same page, not reloaded
        field.clear()
        field.send_keys(value)
    browser.find_element("id", "signin-submit").click()
    wait(browser, "the dashboard", lambda d: attribute(d, "dashboard", "data-state") == "ready")
    showing("costs", costs)  # the next sign-in starts on the costs
    assert severe_console_errors(browser) == []


def test_sign_up_and_onboard_a_cluster_through_the_page(browser: Any, serve_apps: str) -> None:
    marker = uuid.uuid4().hex[:8]
    email, password = f"new-{marker}@example.com", f"pw-{uuid.uuid4().hex}"
    fresh_page(browser)
    for element_id, value in (("signup-organization", f"New Co {marker}"), ("signup-name", "Nia New"),
                              ("signup-email", email), ("signup-password", password)):
        browser.find_element("id", element_id).send_keys(value)
    browser.find_element("id", "signup-submit").click()
    wait(browser, "the new organization's dashboard", lambda d: attribute(d, "dashboard", "data-state") == "ready")
    text, value = shown(browser, "chart-total")
    assert (text, value) == ("$0.00", 0.0) and table(browser, "pod-table") == []

    browser.find_element("id", "onboard-name").send_keys(f"edge-{marker}")
    browser.find_element("id", "onboard-submit").click()
    wait(browser, "the configuration snippet", lambda d: d.find_element("id", "onboard-result").is_displayed())
    account_id = browser.find_element("id", "onboard-account-id").text
    remote_write = browser.find_element("id", "onboard-remote-write").text
    exporter_env = browser.find_element("id", "onboard-exporter-env").text
    assert "remote_write" in remote_write and account_id in remote_write
    assert exporter_env.startswith("env:") and account_id in exporter_env
    assert browser.find_element("id", "onboard-password").text

    token = ok(call("POST", "/tokens", json={"email": email, "password": password}), 201)["token"]
    [org] = [o for o in _organizations(ok(call("GET", "/organizations", token)))]
    listed = ok(call("GET", f"/organizations/{org['id']}/cloud_accounts", token))["cloud_accounts"]
    assert [(a["id"], a["name"], a["type"]) for a in listed] == [(account_id, f"edge-{marker}", "kubernetes_cnr")]

    browser.find_element("id", "signout").click()
    wait(browser, "the sign-in form", lambda d: d.find_element("id", "signin-form").is_displayed())
    assert browser.find_element("id", "onboard-password").get_attribute("textContent") == ""  # shown once, then gone
    assert severe_console_errors(browser) == []


def test_a_wrong_password_is_refused_on_the_page(browser: Any, tenant: Tenant) -> None:
    fresh_page(browser)
    browser.find_element("id", "signin-email").send_keys(tenant.email)
    browser.find_element("id", "signin-password").send_keys("not-the-password")
    browser.find_element("id", "signin-submit").click()
    wait(browser, "the error", lambda d: d.find_element("id", "error").is_displayed())
    assert browser.find_element("id", "error").text
    assert not browser.find_element("id", "dashboard").is_displayed()


def _organizations(answer: Any) -> list[dict[str, Any]]:
    return answer if isinstance(answer, list) else answer["organizations"]


# ---- the recommendations tab and the anomaly marks ------------------------------------------

MARK_RGBA = [214, 39, 40, 255]  # recommendations.js MARK_COLOR, drawn opaque


@dataclass
class Recommended:
    items: list[dict[str, Any]]  # as stored, every module's, of the tenant's accounts
    anomaly_day: int


def _rightsizing_fields(cluster: str, namespace: str, controller: str, cpu: tuple[float, float]) -> dict[str, Any]:
    return {"cluster": cluster, "namespace": namespace, "controller_kind": "deployment", "controller": controller,
            "pod": f"{controller}-0", "container": "app", "replicas": 2,
            "current_cpu_cores": cpu[0], "recommended_cpu_cores": cpu[1], "cpu_efficiency": 0.3, "cpu_monthly_savings": 1.0,
            "current_memory_bytes": 512 * 2**20, "recommended_memory_bytes": 200 * 2**20, "memory_efficiency": 0.4,
            "memory_monthly_savings": 1.0, "total_efficiency": 0.35,
            "evidence": {"window_days": 7, "algorithm": "max", "computed_at": int(time.time())}}


async def write_optimizations(tenant: Tenant, by_run: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """Each (module, account)'s items as its job's completed run writes them; no item marked."""
    store = OptimizationStore(connect(from_env(StoreSettings)))
    await store.ensure_indexes()
    now = int(time.time())
    for (module, account), items in by_run.items():
        await store.start_run(Module(module), account, tenant.organization_id, now - 60, now + DAY, {"seeded": True})
        await store.complete_run(Module(module), account, items, completed=now - 30)
        for found in items:
            await store.mark(found, None, None)


@pytest.fixture(scope="module")
def recommended(tenant: Tenant) -> Recommended:
    """An item or more of every module for the tenant's accounts, as the optimizations job stores
    them: savings of each size, an item with insufficient data, and a cost anomaly of prod-eu on
    yesterday (a day the cost chart shows) with its evidence."""
    org, prod, staging = tenant.organization_id, tenant.accounts["prod"], tenant.accounts["staging"]
    anomaly_day = utc_day(time.time()) - DAY

    def made(module: Module, account: str, key: tuple[str, ...], name: str, saving: float, fields: dict[str, Any]) -> dict[str, Any]:
        return optimization_item(module, account, org, key, resource_id=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                                 cloud_resource_id=name, resource_name=name, saving=saving, fields=fields)

    by_run = {
        ("k8s_rightsizing", prod): [
            made(Module.RIGHTSIZING, prod, ("web",), "shop-web/app", 12.34, _rightsizing_fields("prod-eu", "shop", "shop-web", (1.0, 0.3))),
            made(Module.RIGHTSIZING, prod, ("api",), "payments-api/app", 3.21,
                 _rightsizing_fields("prod-us", "payments", "payments-api", (0.5, 0.2))),
        ],
        ("k8s_rightsizing", staging): [
            made(Module.RIGHTSIZING, staging, ("web",), "shop-web/app", 5.5, _rightsizing_fields("staging-1", "shop", "shop-web", (0.8, 0.4))),
        ],
        ("k8s_spot_instances", prod): [
            made(Module.SPOT_INSTANCES, prod, ("prod-eu", "shop", "deployment", "shop-web"), "deployment/shop-web", 20.25,
                 {"k8s_cluster": "prod-eu", "k8s_namespace": "shop", "controller_kind": "deployment", "controller": "shop-web",
                  "replicas": 2, "rule": "ready", "monthly_cost": 33.75, "nodes": ["node-a", "node-b"]}),
        ],
        ("k8s_cluster_rightsizing", prod): [
            made(Module.CLUSTER_RIGHTSIZING, prod, ("cluster", "prod-eu"), "prod-eu", 0.0,
                 {"k8s_cluster": "prod-eu", "insufficient": "insufficient data: the nodes' types and allocatable capacity"}),
        ],
        ("k8s_cost_anomalies", prod): [
            made(Module.COST_ANOMALIES, prod, ("K8s Cluster", "prod-eu", "", str(anomaly_day)), "prod-eu", 0.0,
                 {"k8s_cluster": "prod-eu", "k8s_namespace": None, "direction": "spike", "start": anomaly_day,
                  "end": anomaly_day, "days": 1, "excess_cost": 7.5,
                  "evidence": {"peak_day": anomaly_day, "cost": 22.5, "baseline": 15.0, "score": 9.1, "relative_change": 0.5,
                               "explained_by": [{"name": "shop", "cost": 14.0, "baseline": 7.0, "share": 0.93}]}}),
        ],
    }
    asyncio.run(write_optimizations(tenant, by_run))
    return Recommended([i for items in by_run.values() for i in items], anomaly_day)


def optimizations_of(tenant: Tenant, params: Any = None) -> dict[str, Any]:
    return ok(call("GET", f"/organizations/{tenant.organization_id}/optimizations", tenant.token, params=params))


def open_recommendations(driver: Any, status: str = "active") -> None:
    from selenium.webdriver.support.ui import Select

    if attribute(driver, "tab-recommendations", "aria-pressed") != "true":
        driver.find_element("id", "tab-recommendations").click()
    if Select(driver.find_element("id", "recommendations-status")).first_selected_option.get_attribute("value") != status:
        Select(driver.find_element("id", "recommendations-status")).select_by_value(status)
    wait(driver, f"the {status} recommendations", lambda d: ("status", status) in page_query(d, "recommendations")
         and attribute(d, "recommendations", "data-state") == "ready")


def modules_shown(driver: Any) -> dict[str, dict[str, Any]]:
    """Per module block, in the page's order: its count and saving (raw values) and its rows (id,
    saving, evidence, button)."""
    blocks = driver.execute_script(
        """return [...document.querySelectorAll('#recommendations-modules [data-module]')]
             .filter((b) => b.tagName === 'DIV').map((b) => ({
               module: b.dataset.module,
               count: Number(b.querySelector('[data-field=count]').dataset.value),
               saving: Number(b.querySelector('h3 [data-field=saving]').dataset.value),
               rows: [...b.querySelectorAll('tbody tr')].map((r) => ({
                 id: r.dataset.id, saving: r.querySelector('[data-field=saving]').textContent,
                 value: Number(r.querySelector('[data-field=saving]').dataset.value),
                 evidence: r.querySelector('[data-field=evidence]').textContent,
                 action: r.querySelector('button').dataset.action})),
             }));""")
    return {block.pop("module"): block for block in blocks}  # an array: a returned object's keys come back sorted


def test_the_recommendations_tab_shows_what_optimizations_answers(browser: Any, tenant: Tenant, recommended: Recommended) -> None:
    browser.get_log("browser")  # the earlier tests' entries: only this test's count
    sign_in(browser, tenant.email, tenant.password)
    open_recommendations(browser)
    assert not browser.find_element("id", "trend").is_displayed()
    answer = optimizations_of(tenant, page_query(browser, "recommendations"))
    # The API's figures are the seeded items' independent sums...
    seeded: dict[str, list[dict[str, Any]]] = {}
    for found in recommended.items:
        seeded.setdefault(found["module"], []).append(found)
    expected_total = sum(i["saving"] for i in recommended.items)
    assert answer["total_saving"] == pytest.approx(expected_total) and expected_total == pytest.approx(41.3)
    # ...and the page shows the API's figures.
    assert shown(browser, "recommendations-total") == (money(answer["total_saving"]), answer["total_saving"])
    blocks = modules_shown(browser)
    assert list(blocks) == ["k8s_rightsizing", "k8s_cluster_rightsizing", "k8s_spot_instances", "k8s_cost_anomalies"]
    for module, block in blocks.items():
        asked = answer["optimizations"][module]
        assert (block["count"], block["saving"]) == (asked["count"], asked["saving"]), module
        assert (asked["count"], asked["saving"]) == (len(seeded[module]), pytest.approx(sum(i["saving"] for i in seeded[module])))
        assert [(r["id"], r["saving"], r["value"], r["action"]) for r in block["rows"]] == [
            (i["id"], money(i["saving"]), i["saving"], "dismiss") for i in asked["items"]]  # the API's order: largest first
        assert sum(r["value"] for r in block["rows"]) == pytest.approx(block["saving"])
    assert sum(b["saving"] for b in blocks.values()) == pytest.approx(shown(browser, "recommendations-total")[1])
    # The evidence: each module's own fields, as a line.
    evidence = {r["id"]: r["evidence"] for b in blocks.values() for r in b["rows"]}
    by_name = {(i["module"], i["resource_name"], i["cloud_account_id"]): i["_id"] for i in recommended.items}
    web = by_name[("k8s_rightsizing", "shop-web/app", tenant.accounts["prod"])]
    assert evidence[web].startswith("shop/deployment/shop-web app: CPU 1000m → 300m, memory 512Mi → 200Mi")
    spot = by_name[("k8s_spot_instances", "deployment/shop-web", tenant.accounts["prod"])]
    assert evidence[spot] == 'deployment/shop-web in shop: 2 replicas, verdict "ready", on node-a, node-b; $33.75 a month on demand'
    sizing = by_name[("k8s_cluster_rightsizing", "prod-eu", tenant.accounts["prod"])]
    assert evidence[sizing] == "insufficient data: the nodes' types and allocatable capacity"
    anomaly = by_name[("k8s_cost_anomalies", "prod-eu", tenant.accounts["prod"])]
    day = datetime.fromtimestamp(recommended.anomaly_day, UTC)
    label = f"{day:%b} {day.day}"
    assert evidence[anomaly].startswith(f"spike on {label} (1 day), +$7.50 against the baseline; peak {label}: $22.50 for $15.00")
    assert evidence[anomaly].endswith("explained by shop +$7.00")
    assert attribute(browser, "recommendations-dismissed", "data-count") == "0"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard-recommendations.png"))
    assert severe_console_errors(browser) == []


def test_dismiss_moves_an_item_to_dismissed_and_restore_brings_it_back(
        browser: Any, tenant: Tenant, recommended: Recommended) -> None:
    spot = next(i for i in recommended.items if i["module"] == "k8s_spot_instances")
    total = sum(i["saving"] for i in recommended.items)
    browser.get_log("browser")
    sign_in(browser, tenant.email, tenant.password)
    open_recommendations(browser)
    browser.find_element("css selector", f'#recommendations button[data-id="{spot["_id"]}"][data-action="dismiss"]').click()
    wait(browser, "the item gone from the active ones", lambda d: spot["_id"] not in
         [r["id"] for r in modules_shown(d)["k8s_spot_instances"]["rows"]] and attribute(d, "recommendations", "data-state") == "ready")
    # The API moved it: listed as dismissed, no longer active, its saving out of the total.
    active, dismissed = optimizations_of(tenant), optimizations_of(tenant, {"status": "dismissed"})
    assert [i["id"] for i in dismissed["optimizations"]["k8s_spot_instances"]["items"]] == [spot["_id"]]
    assert spot["_id"] not in [i["id"] for o in active["optimizations"].values() for i in o["items"]]
    assert active["dismissed_optimizations"]["k8s_spot_instances"] == {"count": 1, "saving": spot["saving"]}
    assert active["total_saving"] == pytest.approx(total - spot["saving"])
    # The page shows the new figures.
    assert same_sum(shown(browser, "recommendations-total")[1], active["total_saving"])
    assert modules_shown(browser)["k8s_spot_instances"]["count"] == 0
    assert (attribute(browser, "recommendations-dismissed", "data-count"),
            float(attribute(browser, "recommendations-dismissed", "data-value"))) == ("1", spot["saving"])

    open_recommendations(browser, "dismissed")
    rows = modules_shown(browser)["k8s_spot_instances"]["rows"]
    assert [(r["id"], r["action"]) for r in rows] == [(spot["_id"], "restore")]
    assert shown(browser, "recommendations-total")[1] == dismissed["total_saving"] == spot["saving"]
    browser.find_element("css selector", f'#recommendations button[data-id="{spot["_id"]}"][data-action="restore"]').click()
    wait(browser, "the item gone from the dismissed ones", lambda d: modules_shown(d)["k8s_spot_instances"]["rows"] == []
         and attribute(d, "recommendations", "data-state") == "ready")
    restored = optimizations_of(tenant)
    assert spot["_id"] in [i["id"] for i in restored["optimizations"]["k8s_spot_instances"]["items"]]
    assert restored["dismissed_optimizations"]["k8s_spot_instances"] == {"count": 0, "saving": 0}
    assert restored["total_saving"] == pytest.approx(total)
    open_recommendations(browser, "active")
    assert spot["_id"] in [r["id"] for r in modules_shown(browser)["k8s_spot_instances"]["rows"]]
    assert severe_console_errors(browser) == []


def test_an_anomaly_is_marked_on_the_daily_cost_chart(browser: Any, tenant: Tenant, recommended: Recommended) -> None:
    """The anomaly of prod-eu on yesterday: named under the chart and drawn on it (a red square
    above yesterday's bar, read back from the canvas's pixels); not with another cluster chosen."""
    from selenium.webdriver.support.ui import Select

    browser.get_log("browser")
    sign_in(browser, tenant.email, tenant.password)
    asked = optimizations_of(tenant, page_query(browser, "trend", "data-anomaly-query"))
    assert [(i["start"], i["end"]) for i in asked["optimizations"]["k8s_cost_anomalies"]["items"]] == [
        (recommended.anomaly_day, recommended.anomaly_day)]
    assert ("type", "k8s_cost_anomalies") in page_query(browser, "trend", "data-anomaly-query")
    assert attribute(browser, "chart-anomalies", "data-value") == f"[{recommended.anomaly_day}]"
    assert browser.find_element("id", "chart-anomalies").text.startswith("Cost anomalies (marked red on the chart): prod-eu ")
    marks = wait(browser, "the marks drawn", lambda d: json.loads(attribute(d, "trend-chart", "data-anomaly-marks") or "null"))
    assert [m["day"] for m in marks] == [recommended.anomaly_day]
    pixel = browser.execute_script(
        "return [...document.getElementById('trend-chart').getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data];",
        marks[0]["x"], marks[0]["y"])
    assert pixel == MARK_RGBA
    # The square sits over yesterday's bar: the chart's label at its x is yesterday's.
    label = browser.execute_script(
        """const chart = Chart.getChart('trend-chart');
           const x = arguments[0] / chart.currentDevicePixelRatio;
           return chart.data.labels[chart.scales.x.getValueForPixel(x)];""", marks[0]["x"])
    day = datetime.fromtimestamp(recommended.anomaly_day, UTC)
    assert label == f"{day:%b} {day.day}"

    Select(browser.find_element("id", "filter-k8s_cluster")).select_by_value("staging-1")
    wait(browser, "staging-1's figures", lambda d: ("k8s_cluster", "staging-1") in page_query(d, "trend")
         and attribute(d, "dashboard", "data-state") == "ready")
    assert attribute(browser, "chart-anomalies", "data-value") == "[]"
    assert json.loads(attribute(browser, "trend-chart", "data-anomaly-marks")) == []
    assert severe_console_errors(browser) == []


# ---- the live tab -------------------------------------------------------------------------


def test_the_live_tab_shows_what_k8s_live_answers_and_refreshes_itself(browser: Any, tenant: Tenant) -> None:
    """Gauges of tests/test_live.py for the "prod" account, up to now; the tab's table must be
    the REST answer to the page's own query, at its last point, and refresh within 30 s."""
    import re

    from selenium.webdriver.support.ui import Select, WebDriverWait

    from tests.test_live import Span, tenant_a
    from tests.test_metroculus import write

    account = tenant.accounts["prod"]
    write(tenant_a(account, Span(align=15)))
    browser.get_log("browser")  # the earlier tests' entries (a refused sign-in is one): only this test's count
    sign_in(browser, tenant.email, tenant.password)
    browser.find_element("id", "tab-live").click()
    assert not browser.find_element("id", "trend").is_displayed()
    wait(browser, "the account picker", lambda d: account in [
        o.get_attribute("value") for o in Select(d.find_element("id", "live-account")).options])
    Select(browser.find_element("id", "live-account")).select_by_value(account)
    # The tab opens on the usage series' CPU (tests/test_live_usage.py); these gauges are the exporter's.
    Select(browser.find_element("id", "live-query")).select_by_value("cpu_usage_vs_requests_by_namespace")

    def showing(query: str) -> Any:
        return lambda d: (("query", query) in page_query(d, "live") and ("cloud_account_id", account) in page_query(d, "live")
                          and attribute(d, "live", "data-state") == "ready")

    wait(browser, "the CPU usage per namespace", showing("cpu_usage_vs_requests_by_namespace"))
    query = page_query(browser, "live")
    assert ("step", "15") in query and int(dict(query)["end_date"]) - int(dict(query)["start_date"]) == 3600
    answer = ok(call("GET", f"/organizations/{tenant.organization_id}/k8s_live", tenant.token, params=query))
    rows = table(browser, "live-table")
    # Latest values, the largest first: db uses more than it requests, shop's job pod is gone.
    assert [(r["key"], r["cells"]["usage"], r["cells"]["request"], r["cells"]["ratio"]) for r in rows] == [
        ("c1 / db", "2.000 cores", "1.500 cores", "133 %"),
        ("c1 / shop", "1.500 cores", "1.625 cores", "92 %"),
        ("c2 / shop", "0.063 cores", "0.250 cores", "25 %"),
    ]
    shown_values = browser.execute_script(
        "return [...document.querySelectorAll('#live-table tbody tr')].map((r) => [r.dataset.key,"
        " r.querySelector('[data-field=usage]').dataset.value, r.querySelector('[data-field=request]').dataset.value]);")
    at_end = {" / ".join(s["labels"].values()): (s["usage"][-1], s["request"][-1]) for s in answer["series"]}
    assert {key: (float(u), float(r)) for key, u, r in shown_values} == {
        key: (usage[1], request[1]) for key, (usage, request) in at_end.items()
    }
    assert all(usage[0] == request[0] == answer["end_date"] for usage, request in at_end.values())
    assert browser.find_element("id", "live-count").text == "3 namespaces."

    Select(browser.find_element("id", "live-query")).select_by_value("cost_rate_by_node")
    wait(browser, "the cost rate per node", showing("cost_rate_by_node"))
    assert [(r["key"], r["cells"]["cost_rate"]) for r in table(browser, "live-table")] == [
        ("c1 / n1", "$4.00/h"), ("c2 / m1", "$1.00/h"), ("c1 / n2", "–"),  # n2 went at mid-window
    ]

    refreshed = attribute(browser, "live-refreshed", "data-value")
    assert re.fullmatch(r"Last refreshed \d\d:\d\d:\d\d UTC; again every 30 s\.", browser.find_element("id", "live-refreshed").text)
    WebDriverWait(browser, 45, poll_frequency=0.5).until(
        lambda d: attribute(d, "live-refreshed", "data-value") != refreshed, "no refresh within 45 s")
    assert attribute(browser, "live", "data-state") == "ready"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "dashboard-live.png"))
    browser.find_element("id", "tab-live").click()  # closed: the cost sections are back
    assert browser.find_element("id", "trend").is_displayed() and not browser.find_element("id", "live").is_displayed()
    assert severe_console_errors(browser) == []


# ---- one total, whichever way it is summed ------------------------------------------------

FEE_CLUSTER, NO_FEE_CLUSTER = "prod-eu", "prod-us"  # of tests.test_ledger.ledger_estate


@dataclass
class Simulated:
    email: str
    password: str
    organization_id: str
    token: str


@pytest.fixture(scope="module")
def simulated(serve_apps: str, tmp_path_factory: pytest.TempPathFactory) -> Simulated:
    """An organization whose ledger the tenant actor wrote from a simulated history: two whole
    past days of a cluster billed a management fee and of one billed none."""
    marker = uuid.uuid4().hex[:8]
    email, password = f"agree-{marker}@example.com", f"pw-{uuid.uuid4().hex}"
    signed = ok(call("POST", "/signup", json={"organization_name": f"Agree Co {marker}", "email": email,
                                              "password": password, "display_name": "Al Gree"}), 201)
    token, organization_id = signed["token"], signed["organization_id"]
    account = ok(call("POST", f"/organizations/{organization_id}/cloud_accounts", token,
                      json={"name": f"estate-{marker}", "type": "kubernetes_cnr"}), 201)["id"]

    last_day = utc_day(time.time() - 32 * 3600)  # ended ≥ 8 h ago: out of the TSDB head
    days = [last_day - DAY, last_day]
    estate = ledger_estate(last_day)
    estate.clusters = [c if c.name == FEE_CLUSTER else replace(c, management_cost_per_hour=0.0)
                       for c in estate.clusters]
    # The fee is worth far more than a cent, so a total that leaves it out cannot pass.
    assert cluster_management_cost(estate, FEE_CLUSTER, days[0], last_day + DAY) > 4
    assert cluster_management_cost(estate, NO_FEE_CLUSTER, days[0], last_day + DAY) == 0
    blocks = tmp_path_factory.mktemp("blocks")
    # Two hours of margin each side: the exporter averages an hour back, the ledger reads half an hour late.
    write_blocks(estate, {c.name: account for c in estate.clusters}, days[0] - 7200, last_day + DAY + 7200, blocks)
    stack.load_blocks(blocks)

    raylocal.connect(helpers.RAY_ADDRESS, "dashboard-tests")
    try:
        actor = helpers.HostedTenant(account, organization_id, config())
        # The actor starts with a cycle of its own over the open days, which the history
        # reaches into: this cycle covers them too, and both are waited for, so nothing
        # is written while the page is read.
        ledger_days = sorted({ledger.day_start(day) for day in days} | set(ledger.open_days(time.time(), 2)))
        ray.get(actor.cycle(ledger_days))
        helpers.wait_for("the actor's own first cycle", lambda: ray.get(actor.status())["cycles"] >= 2,
                         timeout=120, interval=1)
    finally:
        ray.shutdown()  # the actor, not detached, ends with this driver
    return Simulated(email, password, organization_id, token)


def test_the_daily_cost_and_the_clusters_compared_agree_to_the_cent(browser: Any, simulated: Simulated) -> None:
    """The namespaces (idle included) add up to the clusters: the page's two totals, and the
    REST API's sum of the clusters, are one figure, for the estate and for each cluster.

    The management fee is a cluster cost no namespace carries: the ledger must write it as a
    namespace line (``__management__``) for the sums to meet; the fee-less cluster meets anyway.
    """
    from selenium.webdriver.support.ui import Select

    org = f"/organizations/{simulated.organization_id}"
    browser.get_log("browser")  # the earlier tests' entries: only this test's count
    sign_in(browser, simulated.email, simulated.password)
    assert IDLE in {r["key"] for r in table(browser, "breakdown-table")}  # the daily cost by namespace counts idle capacity
    figures = {}
    for cluster in ("", FEE_CLUSTER, NO_FEE_CLUSTER):
        if cluster:
            Select(browser.find_element("id", "filter-k8s_cluster")).select_by_value(cluster)
            wait(browser, f"the figures of {cluster}", lambda d: all(
                ("k8s_cluster", cluster) in page_query(d, section) for section in ("trend", "comparison"))
                and attribute(d, "dashboard", "data-state") == "ready")
        trend_query, comparison_query = page_query(browser, "trend"), page_query(browser, "comparison")
        assert {("breakdown_by", "k8s_namespace"), ("resource_type", NAMESPACE)} <= set(trend_query)
        assert {("breakdown_by", "k8s_cluster"), ("resource_type", CLUSTER)} <= set(comparison_query)
        daily = shown(browser, "chart-total")[1]
        compared = shown(browser, "comparison-total")[1]
        # Each figure is the API's answer to the page's own query...
        assert same_sum(daily, ok(call("GET", f"{org}/breakdown_expenses", simulated.token, params=trend_query))["total"])
        assert same_sum(compared, ok(call("GET", f"{org}/breakdown_expenses", simulated.token,
                                          params=comparison_query))["total"])
        # ...and the REST API's sum of the clusters is a third way to the same figure.
        clusters = ok(call("GET", f"{org}/clean_expenses", simulated.token, params=[
            (name, value) for name, value in comparison_query if name in ("start_date", "end_date", "k8s_cluster")
        ] + [("resource_type", CLUSTER)]))
        assert clusters["total_count"] == (1 if cluster else 2) and clusters["total_cost"] > 0
        figures[cluster or "all clusters"] = {
            "daily cost by namespace": daily, "clusters compared": compared, "REST sum of clusters": clusters["total_cost"],
        }
    # To the cent: apart by less than half a cent (the ledger's sums differ in float rounding only).
    disagreeing = {name: sums for name, sums in figures.items() if max(sums.values()) - min(sums.values()) >= 0.005}
    assert disagreeing == {}, f"not one figure: {figures}"
    assert severe_console_errors(browser) == []
