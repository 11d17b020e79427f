"""The "Segment everything" controls of the SAM tab (gradio wiring; the work is in
`detseg.serve.everything`).

`add(page)` puts a button and a "Generated masks" dropdown in the SAM tab's tools and
registers two named endpoints:

- ``/sam_everything`` (no inputs): generate every mask of the loaded image (HEAVY group:
  the decoder runs over the whole point grid); returns the SAM outputs and the dropdown.
- ``/sam_pick_everything`` (index, 0-based): make generated mask ``index`` the current SAM
  mask (CLICKS group); undo / refine / ``/sam_export`` then work on it.
"""

from __future__ import annotations

import gradio as gr

from detseg.serve import everything as ev

API_NAMES = ("sam_everything", "sam_pick_everything")


def add(page, user_errors, sam_outputs, clicks: str) -> None:
    """Add the controls to ``page.sam.tools`` and wire them (inside `build_app`'s Blocks).

    ``user_errors(area)`` is app's error decorator, ``sam_outputs(page, session)`` its SAM
    renderer, ``clicks`` the prompt-decoder concurrency group.
    """
    ctx, sam = page.ctx, page.sam
    with sam.tools:
        run_btn = gr.Button("Segment everything", size="sm", elem_id="everything-btn")
        masks = gr.Dropdown([], label="Generated masks", elem_id="everything-masks",
                            interactive=True)
        pick_idx = gr.Number(visible=False, precision=0)
        pick_btn = gr.Button(visible=False)
    out = [*page.sam_out, masks]

    def render(session):
        return (*sam_outputs(page, session), gr.Dropdown(choices=ev.choices(session), value=None))

    @user_errors("sam")
    def on_everything(session):
        """Generate every mask of the loaded image (each shown in its own colour with #i)."""
        ev.segment_everything(ctx, session)
        return render(session)

    @user_errors("sam")
    def on_pick(session, index):
        """Make generated mask ``index`` (0-based) the current SAM mask."""
        ev.pick(ctx, session, index)
        return (*sam_outputs(page, session), gr.Dropdown())

    def redraw(session):
        return (*sam_outputs(page, session), gr.Dropdown())

    def failed(event) -> None:
        page.event(event.failure, redraw, [page.state], out, group=clicks)

    failed(page.event(run_btn.click, on_everything, [page.state], out, "sam_everything",
                      show_progress_on=[sam.canvas]))
    failed(page.event(masks.select, on_pick, [page.state, masks], out, group=clicks))
    failed(page.event(pick_btn.click, on_pick, [page.state, pick_idx], out,
                      "sam_pick_everything", group=clicks))

    def sync(session):
        # a new image (or none) drops the generated masks: so does the dropdown
        return gr.Dropdown() if ev.choices(session) else gr.Dropdown(choices=[], value=None)

    page.event(sam.canvas.change, sync, [page.state], [masks], group=clicks)
