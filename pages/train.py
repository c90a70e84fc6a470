"""Train: a form that builds the same ``RunConfig`` as the command line (defaults, choices and help from
the config dataclasses), a background run through the process's one manager, live progress and curves,
Stop and Resume, and every run in the checkpoints folder."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from posterlab.config import (
    DEVICES,
    FITS,
    HEADS,
    LOSSES,
    MODES,
    MULTILABEL_MONITORS,
    OPTIMIZERS,
    SAVE_DTYPES,
    SCHEDULES,
    SINGLE_LABEL_MONITORS,
    DataConfig,
    LabelConfig,
    RunConfig,
    TrainConfig,
    describe,
    to_dict,
)
from posterlab.errors import PosterlabError, one_line
from posterlab.evaluation import figures
from posterlab.evaluation.metrics import headline
from posterlab.models.registry import BACKBONES
from posterlab.models.weights import weights_file
from posterlab.runs import Run, list_runs, load_run
from posterlab.training.study import search_unfinished
from workbench import state, through_app
from workbench.label_health import corrections_control
from workbench.search import search_controls, study_panel
from workbench.widgets import (
    STATUS_ICONS,
    augment_controls,
    balance_control,
    bounded_number,
    elapsed,
    ends_within,
    integer_epochs,
    label_controls,
    live_container,
    progress,
    run_picker,
    show_error,
    when,
)

MODE_HELP = {
    "probe": "frozen backbone: embeddings are computed once and cached, the head trains in seconds",
    "finetune": "the last stages train too, at a lower learning rate",
    "full": "every layer trains: slow on a CPU; the choice for a model without pretraining",
}
LEARNING_RATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.05)
LR_SCALES = (0.01, 0.03, 0.1, 0.3, 1.0)
FLASH_KEY = "train_flash"
STARTED_KEY = "train_started"  # runs started in this session
START_KEY = "train_start_requested"
SHOW_LIVE_KEY = "train_show_live"  # set by Start and Resume: bring the live panel into view once
LIVE_PANEL = "train_live"  # the live panel's container key (its CSS class is st-key-train_live)
# While a run trains, the live panel redraws its progress line and Stop every POLL_SECONDS (a line 2 s
# old named an epoch long gone on the sample, and Stop seemed to land epochs late: issue 18), and its
# curves, a fragment of their own, every CURVES_SECONDS. Each redraw costs the browser CPU in proportion to
# the page (it re-renders every element of this long page), a plotly redraw more, a page run most: on a
# small machine that CPU is the training's (issue 21), so no timed redraw is a page run: Start shows the
# run in the same page run, and the page runs once more at the run's end, which the last poll waits for.
POLL_SECONDS = 1.0
CURVES_SECONDS = 3.0
DEFAULTS = TrainConfig()  # the form's initial values: the config's own defaults
REMEMBER = {"persist_state": "session", "bind": "query-params"}
SEARCH_STOPPED = "Stopped during its search: the finished trials are kept in its study; Resume continues it."


def whole(value: float | None) -> int | None:
    """A number input's value as an int (None, a refused value, stays None)."""
    return None if value is None else int(value)


def start(folder: Path, config: RunConfig, processes: int) -> bool:
    """Start button: train in the background (refused, with the reason, while a run trains). Whether it
    started."""
    try:
        state.trainers().start(folder, config, processes)
    except PosterlabError as error:
        st.session_state[FLASH_KEY] = one_line(error)
        return False
    st.session_state[SHOW_LIVE_KEY] = True
    # a name is used once: the next run gets a fresh, empty name field (clearing this one's state would
    # fight the widget's remembered value)
    st.session_state[STARTED_KEY] = st.session_state.get(STARTED_KEY, 0) + 1
    return True


def request_start() -> None:
    """Start button's callback: note the request; the form's own run starts it (``new_run_form``)."""
    st.session_state[START_KEY] = True


def name_key() -> str:
    """The run-name field's key: a new (empty) field after each start."""
    started = st.session_state.get(STARTED_KEY, 0)
    return "train_name" if not started else f"train_name_{started}"


def resume(folder: Path, run_dir: Path, processes: int) -> None:
    """Resume button: continue a stopped or interrupted run in the background."""
    try:
        state.trainers().resume(folder, run_dir, processes)
    except PosterlabError as error:
        st.session_state[FLASH_KEY] = one_line(error)
    else:
        st.session_state[SHOW_LIVE_KEY] = True


def show_live_panel() -> None:
    """Scroll the live panel (at the top) into view: Start and Resume are clicked far below it, and the
    browser keeps its scroll position across the rerun, so the run's progress would start out of sight."""
    st.html(
        f"<script>{{ const panel = document.querySelector('.st-key-{LIVE_PANEL}');"
        # clear of the navigation bar that stays at the top of the window
        "if (panel) { panel.style.scrollMarginTop = '80px';"
        " panel.scrollIntoView({block: 'start', behavior: 'instant'}); } }</script>",
        unsafe_allow_javascript=True,  # our own constant script, no user input
    )


def monitor_key(history: list[dict]) -> str | None:
    """The validation metric to plot beside the loss (the first headline metric the history has)."""
    keys = history[-1].keys() if history else ()
    return next((f"val_{k}" for k in ("map", "balanced_accuracy", "accuracy") if f"val_{k}" in keys), None)


@st.cache_data(max_entries=32, show_spinner=False)
def _history_figures(name: str, history: list[dict], loss: str) -> tuple:
    """The two figures of a history, built once per new epoch: the live view redraws every couple of
    seconds, and building plotly figures holds the interpreter lock the training thread needs."""
    epochs = len(history)
    chosen = monitor_key(history)
    metric = integer_epochs(figures.curves({name: history}, chosen), epochs) if chosen else None
    return integer_epochs(figures.loss_curves(history, loss), epochs), metric


def history_charts(name: str, history: list[dict], key: str, loss: str = "") -> None:
    """Loss (the run's own criterion, on both splits) and validation-metric curves of one run."""
    left, right = st.columns(2)
    loss_figure, metric_figure = _history_figures(name, history, loss)
    left.plotly_chart(loss_figure, key=f"{key}_loss")
    if metric_figure is not None:
        right.plotly_chart(metric_figure, key=f"{key}_metric")


def _loss_name(run_dir: str | None) -> str:
    if not run_dir or not (Path(run_dir) / "metrics.json").exists():
        return ""
    from posterlab.runs import read_json

    return read_json(Path(run_dir) / "metrics.json").get("loss", "")


def live(was_running: bool) -> None:
    """The run this process trains (or trained last): progress, Stop; its curves are drawn below it by
    ``live_curves``. Polled while it runs."""
    trainers = state.trainers()
    manager = trainers.active() or trainers.manager(state.checkpoints())
    snapshot = manager.snapshot()
    ended_here = False
    if snapshot.running and ends_within(snapshot, POLL_SECONDS):
        # the run ends before the next poll would see it: wait for the end here, so that the panel shows it
        # at once rather than up to a poll late (a Stop clicked meanwhile lands after this wait, at most a
        # poll, in a run that ends within it anyway)
        manager.join(POLL_SECONDS)
        snapshot = manager.snapshot()
        ended_here = not snapshot.running
    if was_running and not snapshot.running and not ended_here:
        # finished: refresh the page (form, run list, sidebar) once; a run that ended during this poll's
        # wait is drawn below first, and the next poll refreshes the page
        st.rerun()
    if snapshot.status == "idle":
        return
    with st.container(border=True):
        processes = f" · {snapshot.processes} processes" if snapshot.processes > 1 else ""
        st.markdown(
            f"##### {STATUS_ICONS.get(snapshot.status, '')} `{snapshot.name}` · {snapshot.status}{processes}"
        )
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
        _outcome(snapshot)
        if snapshot.messages:
            with st.expander("Log"):
                st.code("\n".join(snapshot.messages[-30:]), language=None)


def live_curves() -> None:
    """The live run's curves (and its search, if it is one), redrawn on their own timer while it runs."""
    trainers = state.trainers()
    snapshot = (trainers.active() or trainers.manager(state.checkpoints())).snapshot()
    if snapshot.status != "idle" and snapshot.run_dir and (Path(snapshot.run_dir) / "config.json").exists():
        study_panel(Path(snapshot.run_dir), load_run(snapshot.run_dir).config, "train_live_study")
    if snapshot.status != "idle" and snapshot.history:
        history_charts(snapshot.name, snapshot.history, "train_live", _loss_name(snapshot.run_dir))


def _outcome(snapshot) -> None:
    """How the run ended: the error, why it stopped and whether it can resume, its test figures."""
    if snapshot.status == "failed":
        st.error(f"The run failed: {snapshot.error}", icon=":material/error:")
    stopped_early = snapshot.status == "stopped" and not snapshot.history
    run_dir = Path(snapshot.run_dir) if snapshot.run_dir else None
    if stopped_early and run_dir and (run_dir / "config.json").exists():
        in_search = search_unfinished(load_run(run_dir).config.train, run_dir)
    else:
        in_search = False
    if in_search:
        st.info(SEARCH_STOPPED, icon=":material/info:")
    elif stopped_early:
        st.warning(
            "Stopped before its first epoch: Resume starts it over in its folder; the features extracted "
            "so far are kept, so it picks up where the extraction was.",
            icon=":material/info:",
        )
    elif snapshot.status == "stopped":
        st.info(
            "Stopped: the best epoch so far was evaluated and saved. Resume it below to train the rest.",
            icon=":material/info:",
        )
    shown = headline("", snapshot.metrics)
    if snapshot.status in ("completed", "stopped") and shown:
        for column, (name, value) in zip(st.columns(len(shown)), shown.items(), strict=True):
            column.metric(f"test {name}", f"{value:.3f}")
        st.page_link("pages/compare.py", label="Compare it with other runs", icon=":material/leaderboard:")


# ------------------------------------------------------------------------------------------ form


def model_section() -> dict:
    """Backbone, pretraining, mode and the main hyper-parameters."""
    st.markdown("##### Model")
    backbone = st.selectbox(
        "Backbone",
        list(BACKBONES),
        index=list(BACKBONES).index(DEFAULTS.backbone),
        format_func=lambda name: BACKBONES[name].title,
        key="train_backbone",
        **REMEMBER,
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
        value=spec.pretrained and DEFAULTS.pretrained,
        disabled=not spec.pretrained,
        key=f"train_pretrained_{backbone}",
        **REMEMBER,
    )
    mode = st.radio(
        "Mode",
        MODES,
        index=MODES.index(DEFAULTS.mode if pretrained else "full"),
        horizontal=True,
        key=f"train_mode_{pretrained}",
        **REMEMBER,
    )
    st.caption(MODE_HELP[mode])
    if mode != "full" and not pretrained:
        st.warning("Without pretraining, a frozen backbone holds random features: use full.")
    left, middle, right = st.columns(3)
    epochs = bounded_number(
        left, "Epochs", 1, 1000, TrainConfig(mode=mode).epochs, key=f"train_epochs_{mode}", **REMEMBER
    )
    batch = bounded_number(
        middle,
        "Batch size",
        1,
        1024,
        DEFAULTS.batch_size,
        key="train_batch",
        help=describe(TrainConfig, "batch_size"),
        **REMEMBER,
    )
    patience = bounded_number(
        right,
        "Early-stop patience",
        0,
        100,
        DEFAULTS.patience,
        key="train_patience",
        help=describe(TrainConfig, "patience"),
        **REMEMBER,
    )
    lr = st.select_slider(
        "Learning rate",
        LEARNING_RATES,
        value=DEFAULTS.lr,
        format_func=lambda v: f"{v:g}",
        key=f"train_lr_{mode}",
        help=describe(TrainConfig, "lr"),
        **REMEMBER,
    )
    return {
        "backbone": backbone,
        "pretrained": pretrained,
        "mode": mode,
        "epochs": whole(epochs),
        "batch_size": whole(batch),
        "patience": whole(patience),
        "lr": float(lr),
    }


def data_section(path: str) -> tuple[LabelConfig | None, dict]:
    """What to learn from the sidebar's dataset (shared with the Dataset page), balancing, fits, limit."""
    dataset = state.dataset(path)
    st.markdown(f"##### Data · `{state.display_name(path)}`")
    st.caption("Shared with the Dataset page: a selection made there shows here.")
    try:
        labels = label_controls(dataset.frame, state.selection_key(path), state.display_name(path))
    except PosterlabError as error:
        show_error(error)
        labels = None
    balance = balance_control(state.selection_key(path))
    left, right = st.columns(2)
    defaults = DataConfig()
    fits = left.multiselect(
        "Fit posters to the square input",
        FITS,
        default=list(defaults.fits),
        key="train_fits",
        help=describe(DataConfig, "fit"),
        **REMEMBER,
    )
    limit = bounded_number(
        right,
        "Poster limit (0: all)",
        0,
        None,
        defaults.limit or 0,
        step=50,
        key="train_limit",
        help=describe(DataConfig, "limit"),
        **REMEMBER,
    )
    if limit is None:  # out of range: refused under its field
        labels = None
    corrections = corrections_control(path, defaults.corrections)
    return labels, {
        "corrections": corrections,
        "balance": balance,
        "fit": (fits or ["crop"])[0],
        "extra_fits": tuple(fits[1:]),
        "limit": whole(limit) or None,
    }


def _optimisation_settings(column, mode: str) -> dict:
    d = DEFAULTS
    values = {
        "head": column.selectbox("Head", HEADS, index=HEADS.index(d.head), key="train_head", **REMEMBER),
        "dropout": column.slider("Dropout", 0.0, 0.9, d.dropout, 0.05, key="train_dropout", **REMEMBER),
        "weight_decay": column.select_slider(
            "Weight decay",
            WEIGHT_DECAYS,
            d.weight_decay,
            key="train_wd",
            help=describe(TrainConfig, "weight_decay"),
            **REMEMBER,
        ),
        "optimizer": column.selectbox(
            "Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(d.optimizer), key="train_optimizer", **REMEMBER
        ),
        "schedule": column.selectbox(
            "Schedule", SCHEDULES, index=SCHEDULES.index(d.schedule), key="train_schedule", **REMEMBER
        ),
        "warmup_epochs": whole(
            bounded_number(column, "Warm-up epochs", 0, 100, d.warmup_epochs, key="train_warmup", **REMEMBER)
        ),
    }
    return values


def _loss_settings(column, watched: tuple[str, ...]) -> dict:
    d = DEFAULTS
    return {
        "loss": column.selectbox(
            "Loss",
            LOSSES,
            index=LOSSES.index(d.loss),
            key="train_loss",
            help=describe(TrainConfig, "loss"),
            **REMEMBER,
        ),
        "label_smoothing": column.slider(
            "Label smoothing", 0.0, 0.3, d.label_smoothing, 0.05, key="train_smoothing", **REMEMBER
        ),
        "monitor": column.selectbox(
            "Watch on validation",
            ("auto", *watched),
            index=0,
            key=f"train_monitor_{watched[0]}",
            help=describe(TrainConfig, "monitor"),
            **REMEMBER,
        ),
    }


def _finetune_settings(column, mode: str) -> dict:
    d = DEFAULTS
    off = mode == "probe"
    return {
        "unfreeze": whole(
            bounded_number(
                column,
                "Finetune: stages that train",
                1,
                8,
                d.unfreeze,
                key="train_unfreeze",
                disabled=mode != "finetune",
                **REMEMBER,
            )
        ),
        "gradual_every": whole(
            bounded_number(
                column,
                "Finetune: one more stage every N epochs (0: all at once)",
                0,
                100,
                d.gradual_every,
                key="train_gradual",
                disabled=mode != "finetune",
                **REMEMBER,
            )
        ),
        "backbone_lr_scale": float(
            column.select_slider(
                "Backbone lr × (finetune / full)",
                LR_SCALES,
                d.backbone_lr_scale,
                key="train_scale",
                disabled=off,
                **REMEMBER,
            )
        ),
        "layer_decay": float(
            column.slider(
                "Layer-wise lr decay",
                0.5,
                1.0,
                d.layer_decay,
                0.05,
                key="train_layer_decay",
                disabled=off,
                help=describe(TrainConfig, "layer_decay"),
                **REMEMBER,
            )
        ),
    }


def _run_settings(column) -> dict:
    d = DEFAULTS
    return {
        "flip_views": column.checkbox(
            "Flipped copies (cached features)",
            d.flip_views,
            key="train_flip_views",
            help=describe(TrainConfig, "flip_views"),
            **REMEMBER,
        ),
        "device": column.selectbox(
            "Device", DEVICES, index=DEVICES.index(d.device), key="train_device", **REMEMBER
        ),
        "seed": whole(bounded_number(column, "Seed", 0, 2**31 - 1, d.seed, key="train_seed", **REMEMBER)),
        "save_dtype": column.selectbox(
            "Save weights as",
            SAVE_DTYPES,
            index=SAVE_DTYPES.index(d.save_dtype),
            key="train_dtype",
            **REMEMBER,
        ),
    }


def more_settings(mode: str, labels: LabelConfig | None) -> dict:
    """Everything else the config has a widget for, in an expander."""
    watched = MULTILABEL_MONITORS if labels is None or labels.target == "genres" else SINGLE_LABEL_MONITORS
    with st.expander("More settings"):
        c1, c2, c3, c4 = st.columns(4)
        values = _optimisation_settings(c1, mode) | _loss_settings(c2, watched)
        values |= _finetune_settings(c3, mode) | _run_settings(c4)
    with st.expander("Search (Optuna: lr, dropout, weight decay)"):
        values |= search_controls(DEFAULTS)
    with st.expander("Augmentation (image modes: finetune and full)"):
        values["augment"] = augment_controls("train_aug")
    return values


def gpu_processes() -> int:
    """With several GPUs visible: how many to train on (one process each, through torchrun)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return 1
    return int(
        st.select_slider(
            "GPUs",
            list(range(1, count + 1)),
            value=count,
            key="train_gpus",
            **REMEMBER,
            help="Several GPUs train as one torchrun job (one process per GPU, the global batch "
            "split between them); the page follows it through the run folder.",
        )
    )


def build_config(
    path: str, labels: LabelConfig | None, data: dict, train: dict, name: str
) -> RunConfig | None:
    """The ``RunConfig`` the form describes (None, with the reason shown, when it is not valid)."""
    if labels is None or None in train.values():
        return None  # a value out of range: refused under its field (``bounded_number``)
    try:
        seed = train["seed"]
        return RunConfig(
            DataConfig(path=path, labels=labels, seed=seed, **data), TrainConfig(**train), name=name
        )
    except PosterlabError as error:
        show_error(error)
        return None


def name_field(slot, folder: Path) -> str:
    """The run-name field, in ``slot`` (keyed by ``name_key``: a new, empty field after each start)."""
    return slot.text_input(
        "Run name (optional)",
        key=name_key(),
        placeholder="empty: <time>-<backbone>-<mode>",
        help=f"The run's folder under {folder}",
    ).strip()


def new_run_form(folder: Path) -> None:
    """The form: model, data and hyper-parameters → a validated ``RunConfig`` → Start."""
    path = state.dataset_path()
    if not path:
        st.info("Pick a dataset in the sidebar to train on.")
        return
    model_col, data_col = st.columns(2, gap="large")
    with model_col:
        train = model_section()
    with data_col:
        labels, data = data_section(path)
    train |= more_settings(train["mode"], labels)
    processes = gpu_processes()
    name_slot = st.empty()  # Start puts a fresh field in its place
    name = name_field(name_slot, folder)
    config = build_config(path, labels, data, train, name)
    st.button(
        "Start training",
        type="primary",
        icon=":material/play_arrow:",
        on_click=request_start,
        disabled=config is None,
        key="train_start",
    )
    # started here, not in the callback: the config is this run's, with every value the user just typed
    # (a callback's arguments are those of the previous run, which may not have seen the last edit)
    # no rerun after it: the live panel is drawn after this form (into its slot at the top), so this page
    # run already shows the run training, and the used name's field gives way to a fresh one here
    requested = st.session_state.pop(START_KEY, False) and config is not None
    if requested and start(folder, config, processes):
        name_field(name_slot, folder)
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.error(flash, icon=":material/block:")
    if config is not None:
        with st.expander("The run's config.json"):
            st.json(to_dict(config), expanded=False)


# ------------------------------------------------------------------------------------------ runs


def training_now(run: Run) -> bool:
    """Whether this process trains ``run`` right now (its folder on disk still shows how it was)."""
    active = state.trainers().active()
    snapshot = active.snapshot() if active is not None else None
    return bool(snapshot and snapshot.run_dir) and Path(snapshot.run_dir).resolve() == run.path.resolve()


def saved_run(folder: Path, run: Run) -> None:
    """One run as read back from disk: how it ended (and why), its time, Resume, test figures, curves."""
    if training_now(run):  # resumed: its folder's figures are the old session's until it ends
        st.markdown(f"{STATUS_ICONS['running']} **training now**: its progress is at the top of the page.")
        return
    status = run.status
    epochs = run.config.train.epochs
    line = f"{STATUS_ICONS.get(run.state, '')} **{run.state}** · started {when(status.get('started'))}"
    if run.state != "completed" and run.history:
        line += f" · epoch {len(run.history)}/{epochs}"
    if status.get("seconds"):
        line += f" · took {elapsed(status['seconds'])}"
    line += f" · {run.config.train.backbone} {run.config.train.mode} on `{state.display_name(run.config.data.path)}`"
    st.markdown(line)
    if run.state == "failed":
        st.error(status.get("error") or "failed without a message", icon=":material/error:")
    owner = status.get("owner")
    if run.state == "running" and owner:  # trained elsewhere (the command line, torchrun, another server)
        st.caption(f"Training in process {owner['pid']} on {owner['host']}; its heartbeat keeps it live.")
    searching = search_unfinished(run.config.train, run.path)
    if run.state == "stopped":
        why = SEARCH_STOPPED if searching else status.get("note") or status.get("reason") or "a stop request"
        st.caption(f"Why: {why}")
    interrupted = run.state == "failed" and str(status.get("error", "")).startswith("interrupted")
    resumable = (run.path / "resume.safetensors").exists() or searching or interrupted or not run.history
    if run.state in ("stopped", "failed") and resumable:
        st.button(
            "Resume",
            icon=":material/resume:",
            on_click=resume,
            args=(folder, run.path, 1),
            key="train_resume",
            help="Continue from its last finished epoch (from the start, in this folder, if none finished).",
        )
    test = (run.metrics or {}).get("test", {})
    shown = headline(run.metrics.get("task", "") if run.metrics else "", test.get("metrics", {}))
    if shown:
        for column, (metric, value) in zip(st.columns(len(shown)), shown.items(), strict=True):
            base = test.get("baseline", {}).get(metric)
            delta = value - base if base is not None else None
            column.metric(
                f"test {metric}",
                f"{value:.3f}",
                delta=f"{delta:+.3f} vs baseline" if delta is not None and abs(delta) >= 5e-4 else None,
                delta_color="normal" if delta is not None and abs(delta) >= 5e-4 else "off",
            )
    if run.history:
        history_charts(run.name, run.history, "train_saved", (run.metrics or {}).get("loss", ""))
    study_panel(run.path, run.config, "train_saved_study", on_start=lambda config: start(folder, config, 1))


def runs_section(folder: Path) -> None:
    """Every run in the checkpoints folder, as read back from disk (survives refreshes and restarts)."""
    st.subheader(f"Runs in `{folder}`")
    runs = list_runs(folder)
    if not runs:
        st.caption("No runs yet.")
        return
    # keyed by the newest run, so that a new run (listed first) is the one shown once it appears
    run = run_picker(runs, "Run", key=f"train_run_pick_{runs[0].name}")
    saved_run(folder, run)


through_app()  # before anything is drawn: see workbench.through_app
folder = state.checkpoints()
st.title(":material/model_training: Train")
trainers = state.trainers()
live_panel = live_container(LIVE_PANEL)  # at the top, filled once the form below has had its say
notice = st.empty()
st.subheader("New run")
new_run_form(folder)  # Start starts the run here: the panel drawn next already shows it
running = trainers.active() is not None
with live_panel:
    st.fragment(live, run_every=POLL_SECONDS if running else None)(running)
    st.fragment(live_curves, run_every=CURVES_SECONDS if running else None)()
if running:
    notice.info(
        "A run is training; you can keep using the other pages. Another Start is refused until it ends.",
        icon=":material/info:",
    )
if st.session_state.pop(SHOW_LIVE_KEY, False):
    show_live_panel()
st.divider()
runs_section(folder)
