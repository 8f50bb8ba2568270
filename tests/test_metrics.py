"""``/metrics`` in process: the per-account gauges, the feed counters and the build info
follow the engine and the feed; every family is declared before it has a sample."""

from __future__ import annotations

from adapters.okx.decode import OkxDecoder
from monitor.core.engine import MarginEngine
from monitor.runtime.daemon import Daemon, Lane
from monitor.runtime.feed import Inbox, LinkStats
from monitor.runtime.metrics import BuildInfo, Metrics
from monitor.runtime.pipeline import SinkTask
from tests.builders import make_config
from tests.daemon_fakes import Clock, NullSink, ScriptedFeed
from tests.test_daemon_loop import account_frame, mark, positions_frame

FAMILIES = (
    "riskmon_margin_ratio", "riskmon_account_level", "riskmon_account_equity_usd",
    "riskmon_account_maint_margin_usd", "riskmon_account_risk_known",
    "riskmon_feed_connected", "riskmon_feed_reconnects_total", "riskmon_feed_errors_total",
    "riskmon_stale_instruments", "riskmon_build_info",
)


def daemon() -> tuple[Daemon, MarginEngine, ScriptedFeed]:
    engine = MarginEngine(make_config())
    feed = ScriptedFeed()
    return (Daemon([Lane(engine, OkxDecoder(), feed, Inbox())], SinkTask(NullSink()),
                   wall_s=Clock(1_000.0)), engine, feed)


def apply_frames(engine: MarginEngine, cash: float, price: float) -> None:
    """``main``: ``cash`` USDT, 10 contracts of BTC-USDT-SWAP at 40,000, marked at ``price``."""
    decoder = OkxDecoder()
    for frame in (account_frame(cash, 1_000), positions_frame(10, 1_000), mark(price, 1_001)):
        for event in decoder.decode_message(frame.text, frame.account, frame.recv_ms):
            engine.apply(event)


def test_every_family_is_declared_before_it_has_a_sample() -> None:
    lines = Metrics().render(0.0).splitlines()
    for name in FAMILIES:
        assert f"# TYPE {name} {'counter' if name.endswith('_total') else 'gauge'}" in lines
        assert not [line for line in lines if line.startswith(name + "{")]


def test_the_gauges_follow_the_engine_and_the_feed() -> None:
    under_test, engine, feed = daemon()
    apply_frames(engine, 10_000, 40_000)
    feed.stats = {"public": LinkStats(3, 2), "private:main": LinkStats(1, 0)}
    under_test.refresh_gauges()

    metrics = under_test.metrics
    figures = engine.figures("main")
    assert metrics.account_level == {"main": 0}
    assert metrics.account_equity_usd == {"main": figures.equity_usd}
    assert metrics.account_maint_margin_usd == {"main": figures.maint_margin_usd}
    assert metrics.account_risk_known == {"main": True}
    assert metrics.feed_reconnects == {"public": 3, "private:main": 1}
    assert metrics.feed_errors == {"public": 2, "private:main": 0}
    assert metrics.stale_instruments == 0
    lines = metrics.render(1_002.0).splitlines()
    assert 'riskmon_account_level{account="main"} 0' in lines
    assert 'riskmon_account_risk_known{account="main"} 1' in lines
    assert 'riskmon_feed_reconnects_total{feed="public"} 3' in lines
    assert 'riskmon_feed_errors_total{feed="private:main"} 0' in lines
    build = BuildInfo.current()
    assert (f'riskmon_build_info{{version="{build.version}",python="{build.python}",'
            f'compiled="{str(build.compiled).lower()}"}} 1') in lines


def test_a_level_is_exported_as_its_rank() -> None:
    under_test, engine, _ = daemon()
    # 100 USDT against 10 contracts of BTC at 40,000 marked at 39,150: deleverage.
    apply_frames(engine, 100, 39_150)
    under_test.refresh_gauges()
    assert engine.level("main") == "deleverage"
    assert under_test.metrics.account_level == {"main": 3}


def test_an_account_whose_risk_is_unknown_reads_0() -> None:
    under_test, engine, _ = daemon()
    under_test.refresh_gauges()
    assert not engine.risk_known("main")
    assert under_test.metrics.account_risk_known == {"main": False}
    assert 'riskmon_account_risk_known{account="main"} 0' in (
        under_test.metrics.render(1_000.0).splitlines())


def test_the_figures_of_an_account_whose_risk_becomes_unknown_are_withdrawn() -> None:
    # Known, then its mark goes stale: the partial figures must not stay on a dashboard,
    # nor appear as the account's (absent, with risk_known 0 saying why).
    under_test, engine, _ = daemon()
    apply_frames(engine, 10_000, 40_000)
    under_test.refresh_gauges()
    assert under_test.metrics.margin_ratio["main"] is not None
    decoder = OkxDecoder()
    for event in decoder.decode_message(account_frame(10_000, 20_000).text, "main", 20_000):
        engine.apply(event)  # 19 s after the last mark: stale
    assert not engine.risk_known("main")

    under_test.refresh_gauges()

    lines = under_test.metrics.render(1_000.0).splitlines()
    assert 'riskmon_account_risk_known{account="main"} 0' in lines
    for family in ("riskmon_margin_ratio", "riskmon_account_equity_usd",
                   "riskmon_account_maint_margin_usd"):
        assert not [line for line in lines if line.startswith(family + "{")], family
    assert 'riskmon_account_level{account="main"} 0' in lines
