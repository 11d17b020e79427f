"""How the page is wired: named endpoints, queue limits, per-session state."""

from __future__ import annotations

import gradio as gr

from detseg.serve.app import API_NAMES, ServeOptions, build_app


def test_every_model_event_shares_one_concurrency_limit(ctx) -> None:
    demo = build_app(ctx, ServeOptions(concurrency_limit=3, samples=False))
    fns = list(demo.fns.values())
    named = {f.api_name: f for f in fns if f.api_visibility == "public"}
    assert set(named) == set(API_NAMES)
    for f in fns:
        if f.fn is not None and f.queue is not False and f.api_name != "load_example":
            # the Evaluate tab runs no model: its events queue apart, under the same limit
            evaluate_tab = f.fn.__module__ == "detseg.serve.evaluate"
            assert f.concurrency_limit == 3, f.api_name
            assert f.concurrency_id == ("evaluate" if evaluate_tab else "models"), f.api_name


def test_state_is_per_session_not_global(ctx) -> None:
    demo = build_app(ctx, ServeOptions(samples=False))
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert len(states) == 2  # the demo's session, and the Evaluate tab's view
    assert all(s.time_to_live == ServeOptions().session_ttl_s for s in states)
