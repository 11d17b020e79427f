"""How the page is wired: named endpoints, queue limits, per-session state."""

from __future__ import annotations

import gradio as gr

from detseg.serve import evaluate as eval_tab
from detseg.serve.app import API_NAMES, CLICKS, HEAVY, ServeOptions, build_app

MODEL_RUNS = {"load_image", "detect", "detections_to_sam", "sam_everything"}
PROMPTS = {"sam_point", "sam_box", "sam_undo", "sam_clear", "sam_choose", "sam_export", "refine_detection",
           "sam_pick_everything"}


def test_model_runs_and_clicks_have_their_own_concurrency_limits(ctx) -> None:
    demo = build_app(ctx, ServeOptions(concurrency_limit=3, click_concurrency=5, samples=False))
    fns = list(demo.fns.values())
    named = {f.api_name: f for f in fns if f.api_visibility == "public"}
    assert set(named) == set(API_NAMES) == MODEL_RUNS | PROMPTS | set(eval_tab.API_NAMES)
    for name in MODEL_RUNS:  # encoder / detector: a few at once, they use every core
        assert (named[name].concurrency_limit, named[name].concurrency_id) == (3, HEAVY), name
    for name in PROMPTS:  # decoder clicks never wait behind an upload's encoder run
        assert (named[name].concurrency_limit, named[name].concurrency_id) == (5, CLICKS), name
    for f in fns:
        if f.fn is not None and f.queue is not False:
            # the Evaluate tab runs no model: its events queue apart, under the same limit
            evaluate_tab = f.fn.__module__ == "detseg.serve.evaluate"
            assert f.concurrency_id in (("evaluate",) if evaluate_tab else (HEAVY, CLICKS)), f.name


def _listeners(demo: gr.Blocks, elem_id: str) -> list[str]:
    block = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    return [event for f in demo.fns.values() for target, event in f.targets if target == block._id]


def test_an_upload_runs_load_image_once(ctx) -> None:
    # .change also fires when the app itself sets the image box (a sample, a refused file),
    # which ran /load_image a second time; only the user's own actions may load.
    demo = build_app(ctx, ServeOptions(samples=False))
    events = _listeners(demo, "image-in")
    assert "change" not in events and events.count("upload") == 1


def test_every_failing_action_redraws_its_outputs(ctx) -> None:
    # a .failure follow-up writes the same outputs again, so no "Error" marker stays on them
    demo = build_app(ctx, ServeOptions(samples=False))
    fns = list(demo.fns.values())
    for f in fns:
        if f.api_visibility != "public":
            continue
        followers = [g for g in fns if g.trigger_after == f._id and g.trigger_only_on_failure]
        assert followers, f.api_name
        shown = {o._id for o in f.outputs if not isinstance(o, gr.State)}
        assert shown <= {o._id for g in followers for o in g.outputs}, f.api_name


def test_state_is_per_session_not_global(ctx) -> None:
    demo = build_app(ctx, ServeOptions(samples=False))
    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert len(states) == 2  # the demo's session, and the Evaluate tab's view
    assert all(s.time_to_live == ServeOptions().session_ttl_s for s in states)
