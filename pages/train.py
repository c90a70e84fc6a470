"""Train: a form that builds the same ``RunConfig`` as the command line, a background run through the
process's one manager, live progress and curves, Stop, and every run in the checkpoints folder."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from posterlab.config import (
    DEVICES,
    FITS,
    HEADS,
    LOSSES,
    MODES,
    OPTIMIZERS,
    SAVE_DTYPES,
    SCHEDULES,
    DataConfig,
    RunConfig,
    TrainConfig,
    to_dict,
)
from posterlab.errors import PosterlabError
from posterlab.evaluation import figures
from posterlab.evaluation.metrics import MULTILABEL_MONITORS, SINGLE_LABEL_MONITORS
from posterlab.models.factory import weights_file
from posterlab.models.registry import BACKBONES, DEFAULT_BACKBONE
from posterlab.runs import list_runs
from workbench import state, through_app
from workbench.widgets import (
    STATUS_ICONS,
    augment_controls,
    balance_control,
    elapsed,
    headline,
    integer_epochs,
    label_controls,
    one_line,
    progress,
    run_picker,
    show_error,
    when,
)

through_app()  # before anything is drawn: see workbench.through_app

MODE_HELP = {
    "probe": "frozen backbone: embeddings are computed once and cached, the head trains in seconds",
    "finetune": "the last stages train too, at a lower learning rate",
    "full": "every layer trains: slow on a CPU; the choice for a model without pretraining",
}
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
FLASH_KEY = "train_flash"
POLL_SECONDS = 1.5


def start(folder: Path, config: RunConfig) -> None:
    """Start button: train in the background (refused, with the reason, while a run trains)."""
    try:
        state.trainers().start(folder, config)
    except PosterlabError as error:
        st.session_state[FLASH_KEY] = one_line(error)
    else:
        st.session_state["train_name"] = ""  # a name is used once: the next run gets its own folder


def resume(folder: Path, run_dir: Path) -> None:
    """Resume button: continue a stopped or interrupted run in the background."""
    try:
        state.trainers().resume(folder, run_dir)
    except PosterlabError as error:
        st.session_state[FLASH_KEY] = one_line(error)


def monitor_key(history: list[dict]) -> str | None:
    """The validation metric to plot beside the loss (the first headline metric the history has)."""
    keys = history[-1].keys() if history else ()
    return next((f"val_{k}" for k in ("map", "balanced_accuracy", "accuracy") if f"val_{k}" in keys), None)


def history_charts(name: str, history: list[dict], key: str) -> None:
    """Loss and validation-metric curves of one run."""
    loss, metric = st.columns(2)
    epochs = len(history)
    loss.plotly_chart(integer_epochs(figures.loss_curves(history), epochs), key=f"{key}_loss")
    chosen = monitor_key(history)
    if chosen:
        figure = figures.curves({name: history}, chosen)
        metric.plotly_chart(integer_epochs(figure, epochs), key=f"{key}_metric")


def live(was_running: bool) -> None:
    """The run this process trains (or trained last): progress, Stop, curves. Polled while it runs."""
    trainers = state.trainers()
    manager = trainers.active() or trainers.manager(state.checkpoints())
    snapshot = manager.snapshot()
    if was_running and not snapshot.running:
        st.rerun()  # finished: refresh the page (form, run list, sidebar) once
    if snapshot.status == "idle":
        return
    with st.container(border=True):
        icon = STATUS_ICONS.get(snapshot.status, "")
        st.markdown(f"##### {icon} `{snapshot.name}` · {snapshot.status}")
        fraction, text = progress(snapshot)
        st.progress(fraction, text=text)
        if snapshot.running:
            st.button(
                "Stop",
                icon=":material/stop:",
                on_click=manager.stop,
                disabled=snapshot.stop_requested,
                key="train_stop",
                help="Stops at the next batch; the best weights so far are still evaluated and saved.",
            )
        if snapshot.status == "failed":
            st.error(f"The run failed: {snapshot.error}", icon=":material/error:")
        elif snapshot.status in ("completed", "stopped"):
            shown = headline(snapshot.metrics)
            if shown:
                for column, (name, value) in zip(st.columns(len(shown)), shown.items(), strict=True):
                    column.metric(f"test {name}", f"{value:.3f}")
            st.page_link(
                "pages/compare.py", label="Compare it with other runs", icon=":material/leaderboard:"
            )
        if snapshot.history:
            history_charts(snapshot.name, snapshot.history, "train_live")
        if snapshot.messages:
            with st.expander("Log"):
                st.code("\n".join(snapshot.messages[-30:]), language=None)


def new_run_form(folder: Path) -> None:
    """The form: model, data and hyper-parameters → a validated ``RunConfig`` → Start."""
    path = state.dataset_path()
    if not path:
        st.info("Pick a dataset in the sidebar to train on.")
        return
    dataset = state.dataset(path)
    model_col, data_col = st.columns(2, gap="large")
    with model_col:
        st.markdown("##### Model")
        backbone = st.selectbox(
            "Backbone",
            list(BACKBONES),
            index=list(BACKBONES).index(DEFAULT_BACKBONE),
            format_func=lambda name: BACKBONES[name].title,
            key="train_backbone",
            persist_state="session",
        )
        spec = BACKBONES[backbone]
        where = (
            "local weights file"
            if weights_file(backbone)
            else "weights from the Hugging Face hub on first use"
            if spec.pretrained
            else "no pretrained weights exist"
        )
        st.caption(f"{spec.notes} · {where}")
        pretrained = st.checkbox(
            "Start from pretrained weights",
            value=spec.pretrained,
            disabled=not spec.pretrained,
            key=f"train_pretrained_{backbone}",
            persist_state="session",
        )
        mode = st.radio(
            "Mode",
            MODES,
            index=MODES.index("probe" if pretrained else "full"),
            horizontal=True,
            key=f"train_mode_{pretrained}",
            persist_state="session",
        )
        st.caption(MODE_HELP[mode])
        if mode != "full" and not pretrained:
            st.warning("Without pretraining, a frozen backbone holds random features: use full.")
        probe = mode == "probe"
        left, middle, right = st.columns(3)
        epochs = left.number_input(
            "Epochs",
            min_value=1,
            max_value=1000,
            value=30 if probe else 8,
            key=f"train_epochs_{mode}",
            persist_state="session",
        )
        batch_size = middle.number_input(
            "Batch size", min_value=1, max_value=1024, value=64, key="train_batch", persist_state="session"
        )
        patience = right.number_input(
            "Early-stop patience",
            min_value=0,
            max_value=100,
            value=6,
            key="train_patience",
            persist_state="session",
            help="Epochs without a better validation score before stopping; 0 never stops early.",
        )
        lr = st.select_slider(
            "Learning rate",
            LEARNING_RATES,
            value=1e-3,
            format_func=lambda v: f"{v:g}",
            key=f"train_lr_{mode}",
            persist_state="session",
        )
    with data_col:
        st.markdown(f"##### Data · `{dataset.name}`")
        st.caption("Shared with the Dataset page: a selection made there shows here.")
        try:
            labels = label_controls(dataset.frame, state.selection_key(path))
        except PosterlabError as error:
            show_error(error)
            labels = None
        balance = balance_control(state.selection_key(path))
        left, right = st.columns(2)
        fits = left.multiselect(
            "Fit posters to the square input",
            FITS,
            default=["crop"],
            key="train_fits",
            persist_state="session",
            help="crop: centre crop; pad: whole poster on a square; squash: whole poster stretched. Several: "
            "training sees a random one, test time averages them all (the first is what Grad-CAM shows).",
        )
        limit = right.number_input(
            "Poster limit (0: all)",
            min_value=0,
            value=0,
            step=50,
            key="train_limit",
            persist_state="session",
            help="A random subset, by seed: for quick tries on a large dataset.",
        )

    with st.expander("More settings"):
        c1, c2, c3, c4 = st.columns(4)
        head = c1.selectbox("Head", HEADS, key="train_head", persist_state="session")
        dropout = c1.slider("Dropout", 0.0, 0.9, 0.2, 0.05, key="train_dropout", persist_state="session")
        weight_decay = c1.select_slider(
            "Weight decay", (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.05), 1e-4, key="train_wd", persist_state="session"
        )
        optimizer = c2.selectbox("Optimizer", OPTIMIZERS, key="train_optimizer", persist_state="session")
        schedule = c2.selectbox("Schedule", SCHEDULES, key="train_schedule", persist_state="session")
        loss = c2.selectbox(
            "Loss",
            LOSSES,
            key="train_loss",
            persist_state="session",
            help="auto: BCE for multi-label, cross-entropy otherwise",
        )
        smoothing = c3.slider(
            "Label smoothing", 0.0, 0.3, 0.0, 0.05, key="train_smoothing", persist_state="session"
        )
        unfreeze = c3.number_input(
            "Finetune: stages that train",
            1,
            8,
            1,
            key="train_unfreeze",
            persist_state="session",
            disabled=mode != "finetune",
        )
        gradual = c3.number_input(
            "Finetune: one more stage every N epochs (0: all at once)",
            0,
            100,
            0,
            key="train_gradual",
            persist_state="session",
            disabled=mode != "finetune",
        )
        scale = c3.select_slider(
            "Backbone lr × (finetune / full)",
            (0.01, 0.03, 0.1, 0.3, 1.0),
            0.1,
            key="train_scale",
            persist_state="session",
        )
        flip_views = c4.checkbox(
            "Flipped copies (cached features)",
            False,
            help="Probe and CPU finetune train on cached features; flipped copies give them flip augmentation.",
            key="train_flip_views",
            persist_state="session",
        )
        watched = (
            MULTILABEL_MONITORS if labels is None or labels.target == "genres" else SINGLE_LABEL_MONITORS
        )
        monitor = c4.selectbox(
            "Watch on validation",
            watched,
            key=f"train_monitor_{watched[0]}",
            persist_state="session",
            help="The metric early stopping and the choice of the best epoch (and of a search trial) follow.",
        )
        device = c4.selectbox("Device", DEVICES, key="train_device", persist_state="session")
        seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="train_seed", persist_state="session")
        save_dtype = c4.selectbox("Save weights as", SAVE_DTYPES, key="train_dtype", persist_state="session")
        trials = c4.number_input(
            "Random-search trials",
            0,
            100,
            0,
            key="train_trials",
            persist_state="session",
            help="over lr, dropout, weight decay",
        )
        folds = c4.number_input(
            "Folds per trial (0: validation split)", 0, 10, 0, key="train_folds", persist_state="session"
        )
    with st.expander("Augmentation (image modes: finetune and full)"):
        augment = augment_controls("train_aug")
    name = st.text_input(
        "Run name (optional)",
        key="train_name",
        persist_state="session",
        placeholder="empty: <time>-<backbone>-<mode>",
        help=f"The run's folder under {folder}",
    ).strip()

    config = None
    if labels is not None:
        try:
            config = RunConfig(
                data=DataConfig(
                    path=path,
                    labels=labels,
                    seed=int(seed),
                    balance=balance,
                    fit=(fits or ["crop"])[0],
                    extra_fits=tuple(fits[1:]),
                    limit=int(limit) or None,
                ),
                train=TrainConfig(
                    backbone=backbone,
                    pretrained=pretrained,
                    mode=mode,
                    head=head,
                    epochs=int(epochs),
                    batch_size=int(batch_size),
                    lr=float(lr),
                    backbone_lr_scale=float(scale),
                    weight_decay=float(weight_decay),
                    dropout=float(dropout),
                    optimizer=optimizer,
                    schedule=schedule,
                    loss=loss,
                    label_smoothing=float(smoothing),
                    unfreeze=int(unfreeze),
                    gradual_every=int(gradual),
                    patience=int(patience),
                    monitor=monitor,
                    flip_views=flip_views,
                    device=device,
                    seed=int(seed),
                    save_dtype=save_dtype,
                    search_trials=int(trials),
                    search_folds=int(folds),
                    augment=augment,
                ),
                name=name,
            )
        except PosterlabError as error:
            show_error(error)
    st.button(
        "Start training",
        type="primary",
        icon=":material/play_arrow:",
        on_click=start,
        args=(folder, config),
        disabled=config is None,
        key="train_start",
    )
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.error(flash, icon=":material/block:")
    if config is not None:
        with st.expander("The run's config.json"):
            st.json(to_dict(config), expanded=False)


def runs_section(folder: Path) -> None:
    """Every run in the checkpoints folder, as read back from disk (survives refreshes and restarts)."""
    st.subheader(f"Runs in `{folder}`")
    runs = list_runs(folder)
    if not runs:
        st.caption("No runs yet.")
        return
    # keyed by the newest run, so that a new run (listed first) is the one shown once it appears
    run = run_picker(runs, "Run", key=f"train_run_pick_{runs[0].name}")
    status = run.status
    line = f"{STATUS_ICONS.get(run.state, '')} **{run.state}** · started {when(status.get('started'))}"
    if status.get("seconds"):
        line += f" · took {elapsed(status['seconds'])}"
    line += f" · {run.config.train.backbone} {run.config.train.mode} on `{run.config.data.path}`"
    st.markdown(line)
    if run.state == "failed":
        st.error(status.get("error") or "failed without a message", icon=":material/error:")
    if run.state in ("stopped", "failed") and (run.path / "resume.json").exists():
        st.button(
            "Resume",
            icon=":material/resume:",
            on_click=resume,
            args=(folder, run.path),
            key="train_resume",
            help="Continue from its last finished epoch.",
        )
    test = (run.metrics or {}).get("test", {})
    shown = headline(test.get("metrics", {}))
    if shown:
        for column, (metric, value) in zip(st.columns(len(shown)), shown.items(), strict=True):
            base = test.get("baseline", {}).get(metric)
            column.metric(
                f"test {metric}",
                f"{value:.3f}",
                delta=f"{value - base:+.3f} vs baseline" if base is not None else None,
            )
    if run.history:
        history_charts(run.name, run.history, "train_saved")


folder = state.checkpoints()
st.title(":material/model_training: Train")
running = state.trainers().active() is not None
st.fragment(live, run_every=POLL_SECONDS if running else None)(running)
if running:
    st.info(
        "A run is training; you can keep using the other pages. Another Start is refused until it ends.",
        icon=":material/info:",
    )
st.subheader("New run")
new_run_form(folder)
st.divider()
runs_section(folder)
