"""The ``diffkit`` command line: ``plugins``, ``train``, ``sample``, ``evaluate``, ``export`` and
the commands plugins add."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from .kit.files import UNWRITABLE, check_writable
from .plugins import (PLUGIN_FAULTS, PluginLoadError, Registry, failed_plugins_line, make_plugin_manager,
                      plugin_output_to_stderr)

BUILTIN_COMMANDS = ("plugins", "train", "sample", "evaluate", "export", "new-plugin", "distill")


class DiffkitGroup(click.Group):
    """Lets plugins add commands and option names (``diffkit_cli_commands`` hook) before any
    command is looked up."""

    def _load_plugin_commands(self, ctx: click.Context, command: str | None = None) -> None:
        """Once per invocation, with its registry; then one line on stderr names the plugins that
        failed to load, unless the command is ``plugins``, which lists them."""
        root = ctx.find_root()
        if root.meta.get("diffkit.commands_loaded"):
            return
        root.meta["diffkit.commands_loaded"] = True
        registry = _registry(ctx)
        with plugin_output_to_stderr():
            for info, add_commands in registry.implementations("diffkit_cli_commands"):
                _add_plugin_commands(self, info, add_commands)
        line = failed_plugins_line(registry.plugins)
        if line and command != "plugins":
            click.echo(line, err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str):
        self._load_plugin_commands(ctx, name)  # also for built-in commands: a plugin may name their options
        return super().get_command(ctx, name)


def current_registry() -> Registry:
    """The plugin registry of the running ``diffkit`` command (for plugin commands: the schedules,
    samplers and domains usable by name)."""
    return _registry(click.get_current_context())


def _add_plugin_commands(group: click.Group, info, add_commands) -> None:
    """One plugin's ``diffkit_cli_commands``: if it raises or replaces a built-in command, it is
    marked failed and the command line stays as it was before it."""
    before = dict(group.commands)
    try:
        add_commands(cli=group)
        replaced = [name for name in BUILTIN_COMMANDS if group.commands.get(name) is not before.get(name)]
        if replaced:
            raise PluginLoadError(f"tried to replace the built-in command {replaced[0]!r}")
    except PLUGIN_FAULTS as error:
        group.commands.clear()
        group.commands.update(before)
        info.fail(error)


def _registry(ctx: click.Context) -> Registry:
    root = ctx.find_root()
    root.meta.setdefault("diffkit.registry", None)
    if root.meta["diffkit.registry"] is None:
        root.meta["diffkit.registry"] = make_plugin_manager()
    return root.meta["diffkit.registry"]


def _domain(ctx: click.Context, name: str):
    try:
        return _registry(ctx).domain(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--domain") from None


def _plugin_of(ctx: click.Context, domain_name: str) -> tuple[str, str]:
    for info in _registry(ctx).plugins:
        if domain_name in info.domains:
            return info.name, info.version
    return "", ""


@click.group(cls=DiffkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffkit")
def cli() -> None:
    """diffkit: train and sample diffusion models on images, audio, molecules and your own domains.

    \b
    Quick start:
      diffkit plugins                                  # what is installed
      diffkit train --domain image                     # train on the bundled digits
      diffkit sample --domain image -n 64 --out samples/
    """
    warnings.formatwarning = warning_line


def warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: its kind and message, without the source line."""
    return f"{category.__name__}: {message}\n"


@cli.command()
@click.pass_context
def plugins(ctx: click.Context) -> None:
    """List every plugin with its version, its domains and whether it loaded."""
    registry = _registry(ctx)
    root = ctx.find_root()
    if isinstance(root.command, DiffkitGroup):  # so that failures to add commands show too
        root.command._load_plugin_commands(root, "plugins")
    rows = [(info.name, info.version, ", ".join(info.domains) or "-",
             "loaded" if info.status == "loaded" else f"FAILED: {_first_error(info)}") for info in registry.plugins]
    header = ("plugin", "version", "domains", "status")
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(3)]
    for row, info in zip([header] + rows, [None] + registry.plugins):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
        for error in (info.errors[1:] if info is not None else ()):
            click.echo(" " * (sum(widths) + 6) + f"FAILED: {error}")
    if registry.domains:
        click.echo("")
    for name, domain in sorted(registry.domains.items()):
        click.echo(f"{name}: {domain.description}")


def _first_error(info) -> str:
    return info.errors[0] if info.errors else info.error


def _training_overrides(steps, batch_size, seed, compile_model, parallel) -> dict:
    options = (("steps", steps), ("batch_size", batch_size), ("seed", seed), ("compile", compile_model or None),
               ("parallel", parallel))
    train = {key: value for key, value in options if value is not None}
    return {"train": train} if train else {}


@cli.command()
@click.option("--domain", required=True, help="The domain to train (see `diffkit plugins`).")
@click.option("--data", default=None, help="Your data (a folder or file, as the domain reads it); the domain's bundled data when omitted.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="A TOML file of settings (sections data, model, diffusion, train, sample).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one setting, e.g. --set train.lr=1e-3 (repeatable).")
@click.option("--preset", default=None, help="A named preset of the domain, e.g. cpu or gpu (default: the one the domain picks for the data and device, printed with its reason).")
@click.option("--steps", type=int, default=None, help="Number of optimizer steps (train.steps).")
@click.option("--batch-size", type=int, default=None, help="Global batch size, split across processes (train.batch_size).")
@click.option("--seed", type=int, default=None, help="Random seed (train.seed).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder for checkpoints, logs and previews (default: runs/<domain>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--init-from", default=None,
              help="Fine-tune: start from these weights (a run folder, a checkpoint file, an exported folder, or the "
                   "domain's name for its shipped weights) and their settings, which --config and --set then change "
                   "(train.init_from).")
@click.option("--stage", type=click.Choice(["diffusion", "autoencoder"]), default=None,
              help="What to train: a diffusion model (the default), or the autoencoder of the latent stage, on whose "
                   "latents --autoencoder then trains a diffusion (train.stage).")
@click.option("--autoencoder", default=None,
              help="Train the diffusion on the latents of this autoencoder (a run folder, checkpoint file or exported "
                   "folder of --stage autoencoder): its data settings are the run's, the data's latents are computed "
                   "once and cached, and sampling decodes them (latent.autoencoder).")
@click.option("--compile", "compile_model", is_flag=True, help="Compile the denoiser with torch.compile (train.compile).")
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]), default=None,
              help="Under torchrun: ddp replicates the model on every process, fsdp shards its parameters, "
                   "gradients and optimizer state across them, for models too large for one device (train.parallel).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.pass_context
def train(ctx, domain, data, config_file, sets, preset, steps, batch_size, seed, device, out, resume, init_from,
          stage, autoencoder, compile_model, parallel, no_progress):
    """Train a diffusion model for a domain; works with no options on the bundled data.

    Checkpoints, metrics.jsonl, loss.png and sample previews go to the run folder. Run it
    under `torchrun --nproc_per_node N -m diffkit train ...` to train on N processes. With
    --stage autoencoder it trains the autoencoder of the latent stage instead (its previews show
    each original beside its reconstruction); --autoencoder AE then trains a diffusion on its
    latents, which every sampling command decodes.
    """
    from . import checkpoint as ckpt
    from .config import resolve_config
    from .latent import latent_config
    from .loading import finetune_config, weights_source
    from .runner import TrainingError, TrainingInterrupted
    from .runner import train as run_training

    plugin_domain = _domain(ctx, domain)
    overrides = _training_overrides(steps, batch_size, seed, compile_model, parallel)
    if stage is not None:
        overrides.setdefault("train", {})["stage"] = stage
    run_dir = Path(out) if out else _default_run_dir(domain, resume)
    try:
        check_writable(run_dir, "--out")
        if resume:
            _check_something_to_resume(ctx, run_dir)
        if autoencoder is not None and stage == "autoencoder":
            raise ValueError("--autoencoder does not go with --stage autoencoder: an autoencoder learns the data itself")
        if autoencoder is not None and init_from is not None:
            raise ValueError("--autoencoder does not go with --init-from: fine-tuning keeps the autoencoder of the "
                             "weights it starts from")
        if init_from is not None:
            overrides.setdefault("train", {})["init_from"] = weights_source(plugin_domain, init_from, "--init-from")[0]
        if resume:
            config, data = _resume_settings(plugin_domain, run_dir, data, config_file, sets, overrides, preset)
            preset_line = f"preset: {preset}" if preset else "settings: the run's own"
            if autoencoder is not None:
                _check_same_autoencoder(plugin_domain, autoencoder, config)
        elif init_from is not None:
            if preset:
                raise ValueError("--preset does not go with --init-from: the model's settings are those of the "
                                 "weights it starts from (change training settings with --set or --config)")
            config = finetune_config(plugin_domain, init_from, file=config_file, sets=list(sets), overrides=overrides)
            preset_line = f"settings: those of {overrides['train']['init_from']}"
        else:
            chosen, why = (preset, "as asked") if preset else _default_preset(plugin_domain, data, device)
            preset_line = f"preset: {chosen} ({why})" if chosen else "preset: none (the domain's defaults)"
            if autoencoder is not None:
                config = latent_config(plugin_domain, autoencoder, preset=chosen, file=config_file, sets=list(sets),
                                       overrides=overrides)
                preset_line += f"; on the latents of {config['latent']['autoencoder']}"
            else:
                config = resolve_config(plugin_domain, preset=chosen, file=config_file, sets=list(sets),
                                        overrides=overrides)
        announce = _plan_printer(domain, data, preset_line)
        result = run_training(plugin_domain, config, out=run_dir, data=data, resume=resume, device=device,
                              progress=not no_progress, plugin=_plugin_of(ctx, domain), registry=_registry(ctx),
                              on_start=announce)
    except (KeyError, ValueError, FileNotFoundError, *UNWRITABLE, TrainingError, ckpt.CheckpointError) as error:
        raise click.ClickException(_message(error)) from None
    except TrainingInterrupted as interrupted:
        click.echo(str(interrupted), err=True)
        ctx.exit(130)  # the shell's code for a stop by Ctrl-C (128 + SIGINT)
    loss = f", final loss {result.loss:.4f}" if result.loss is not None else ""
    click.echo(f"trained {result.step} steps{loss}; run folder: {result.run_dir}")
    if config["train"]["stage"] == "autoencoder":
        click.echo(f"train a diffusion on its latents with: diffkit train --domain {domain} --autoencoder "
                   f"{_quoted(result.run_dir)} --out RUN")
    else:
        click.echo(f"sample with: diffkit sample --domain {domain} --checkpoint {_quoted(result.run_dir)} --out samples/")


def _check_same_autoencoder(domain, autoencoder: str, config: dict) -> None:
    """On --resume, --autoencoder may repeat the run's autoencoder but not name another."""
    from .loading import weights_source

    named, recorded = weights_source(domain, autoencoder, "--autoencoder")[0], config["latent"]["autoencoder"]
    if named != recorded:
        raise ValueError(f"cannot resume {'a diffusion on ' + repr(recorded) if recorded else 'this run'} with the "
                         f"autoencoder {named!r}: a run keeps the autoencoder it started with")


def _plan_printer(domain: str, data: str | None, preset_line: str):
    """A callback printing what the run is about to do, once the runner knows it."""

    def announce(plan) -> None:
        source = f"{data}" if data else "bundled"
        resuming = f" (resuming at {plan.start_step:,})" if plan.start_step else ""
        processes = f" x {plan.processes} processes" if plan.processes > 1 else ""
        click.echo(f"domain: {domain}  data: {source} ({plan.dataset_size:,} items)  {preset_line}")
        for note in plan.data_notes:
            click.echo(f"  {note}")
        click.echo(f"model: {_count(plan.parameters)} parameters  steps: {plan.steps:,}{resuming}  "
                   f"batch: {plan.batch_size:,}  device: {plan.device}{processes}")
        click.echo(f"run folder: {plan.run_dir}")

    return announce


def _count(number: int) -> str:
    """``1234567 -> "1.2M"``: parameter counts as people say them."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            return f"{number / size:.1f}{suffix}"
    return str(number)


def _quoted(path) -> str:
    import shlex

    return shlex.quote(str(path))


def _calls(config: dict) -> str:
    steps = config["sample"]["steps"]
    return "1 model call" if steps == 1 else f"{steps} model calls"


def _default_run_dir(domain: str, resume: bool) -> Path:
    base = Path("runs") / domain
    if resume or not base.exists():
        return base
    index = 2
    while (base.parent / f"{domain}-{index}").exists():
        index += 1
    return base.parent / f"{domain}-{index}"


def _default_preset(domain, data: str | None, device: str | None) -> tuple[str | None, str]:
    """The preset the domain picks for the data and the device, and why; none when it has no such preset."""
    import torch

    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    preset, why = domain.default_preset(data, torch.device(device))
    return (preset, why) if preset in domain.presets() else (None, "")


def _resume_settings(domain, run_dir: Path, data, config_file, sets, overrides, preset):
    """On --resume the run's own config is the base, and the options are laid over it as a fresh
    run lays them over the defaults (preset, file, --set, options). So the command line that
    started the run resumes it; a setting given a value other than the run's is refused when the
    run restores, naming it, unless it does not alter the steps already taken."""
    from .config import check_config, default_config, limits_of, load_toml, parse_assignment, preset_config
    from .domain import merge_config
    from .loading import load_config

    config, limits = load_config(domain, run_dir), limits_of(domain)
    if preset:
        config = merge_config(config, preset_config(domain, preset))
    if config_file:
        config = merge_config(config, load_toml(config_file))
    for assignment in sets:
        config = merge_config(config, parse_assignment(assignment, config, limits=limits))
    config = merge_config(config, overrides)
    check_config(config, default_config(domain), limits=limits)
    return config, _resumed_data(run_dir, data)


def _check_something_to_resume(ctx: click.Context, run_dir: Path) -> None:
    """A run folder without checkpoints has nothing to resume: say so, and how to start the run
    (again, when it stopped before its first checkpoint)."""
    from . import checkpoint as ckpt

    if ckpt.list_checkpoints(run_dir):
        return
    command = _restart_command(ctx, run_dir)
    if (run_dir / ckpt.RUN_FILE).is_file():
        raise ValueError(f"nothing to resume: the run in {str(run_dir)!r} stopped before its first checkpoint. It can "
                         f"simply start again, from step 0, with the same command without --resume: {command}")
    raise ValueError(f"nothing to resume: {str(run_dir)!r} holds no run (no {ckpt.CHECKPOINT_DIR}/ and no "
                     f"{ckpt.RUN_FILE}); check --out, or start a run there with: {command}")


def _restart_command(ctx: click.Context, run_dir: Path) -> str:
    """This command line without --resume, with --out; a distillation also names the teacher and
    the student's steps, which --resume leaves out, as the run's ``config.json`` records them."""
    import shlex

    given = {**ctx.params, "resume": False, "out": str(run_dir)}
    if ctx.command.name == "distill":
        settings = _json_file(run_dir / "config.json")
        sample = settings.get("sample", {})
        given.update(checkpoint=settings.get("distill", {}).get("teacher") or "TEACHER",
                     student_steps=sample.get("steps", "STEPS"), spacing=sample.get("spacing"))
    words = ["diffkit", ctx.command.name]
    for param in ctx.command.params:
        value = given.get(param.name)
        if not isinstance(param, click.Option) or value is None or value is False or value == param.default:
            continue
        option = max(param.opts, key=len)
        if param.is_flag:
            words.append(option)
        else:
            for item in (value if param.multiple else [value]):
                words += [option, str(item)]
    return shlex.join(words)


def _json_file(path: Path) -> dict:
    """A JSON object from ``path``; empty when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _resumed_data(run_dir: Path, data: str | None) -> str | None:
    """The run's data; --data may repeat it but not name other data."""
    from . import checkpoint as ckpt

    info = ckpt.read_run_info(run_dir)
    if not info:
        return data
    recorded = info.get("data")
    if data is not None and data != recorded:
        raise ValueError(f"cannot resume {str(run_dir)!r} with other data: it was trained on "
                         f"{recorded or 'the bundled data'!r}, not {data!r}")
    return recorded


@cli.command()
@click.option("--domain", default=None, help="The domain to sample (see `diffkit plugins`); with --checkpoint, the one it was trained for by default.")
@click.option("--checkpoint", default=None, help="A checkpoint file, a run folder (its latest checkpoint), an exported weights folder or the name of shipped weights (e.g. audio-digits); the domain's own shipped weights when omitted.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="A TOML file of settings merged over the checkpoint's (e.g. a [sample] section); its data, model and diffusion settings must match the weights.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one setting, e.g. --set sample.spacing=trimmed (repeatable).")
@click.option("-n", "--num-samples", "n", type=int, default=16, show_default=True, help="How many samples to draw; more than memory can hold until they are written is refused before drawing, with what they would take.")
@click.option("--sampler", default=None, help="Sampler name: ddpm, ddim, euler, heun, dpmpp_2m, ...; for flow matching also flow_euler, flow_heun, flow_midpoint, dopri5; for categorical diffusion discrete_flow or ancestral (default from the config).")
@click.option("--steps", type=int, default=None, help="Sampling steps (default from the config).")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance weight; 1 = none.")
@click.option("--cond", default=None, help="The condition, as the domain reads it (e.g. a class label).")
@click.option("--seed", type=int, default=None, help="Random seed; the same seed gives the same samples, whatever the batch size (default: a fresh one, printed and recorded).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--batch-size", type=int, default=None, help="Samples drawn per model batch.")
@click.option("--init", "init", default=None, help="Edit this input: a file, or what the domain reads as one (e.g. a SMILES string).")
@click.option("--mask", default=None, help="With --init: what to keep, as the domain reads it (e.g. a mask image or a time span); without it --init is edited as a whole.")
@click.option("--strength", type=float, default=0.6, show_default=True, help="With --init and no --mask: how far to noise the input (0..1).")
@click.option("--resample", type=int, default=None, help="With --mask (or a kept part of --init): resampling rounds per step (RePaint); more agrees better with the kept part. Default: sample.resample.")
@click.option("--interpolate", type=int, default=0, help="Draw this many samples along a spherical interpolation between two noises.")
@click.option("--out", required=True, type=click.Path(), help="Where to write the samples (a folder, or a file whose suffix the domain supports).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.pass_context
def sample(ctx, domain, checkpoint, config_file, sets, n, sampler, steps, guidance, cond, seed, device, batch_size,
           init, mask, strength, resample, interpolate, out, no_progress):
    """Draw new samples, edit an input (--init), or interpolate (--interpolate).

    The settings are the checkpoint's, under --config, --set and the options. How the samples
    were made (seed, settings, checkpoint) is recorded beside them in samples.json (inside an
    output folder) or OUT.json (beside an output file). Under
    `torchrun --nproc_per_node N -m diffkit sample ...` the processes share the work and the first
    one writes all samples: the same ones a single process draws with the same seed.
    """
    from . import checkpoint as ckpt
    from . import distributed
    from .config import sampling_config
    from .generate import SampleRequest, check_request, generate
    from .loading import load_for_sampling
    from .records import record_path, write_record
    from .workers import WorkerDied

    shipped = _registry(ctx).shipped(checkpoint) if checkpoint else None  # e.g. --checkpoint audio-digits
    plugin_domain = _domain(ctx, domain or (shipped[0].name if shipped else _domain_of_checkpoint(checkpoint)))
    source = checkpoint or plugin_domain.pretrained()
    if source is None:
        raise click.UsageError(f"the {domain} domain ships no weights; pass --checkpoint (a file or a run folder)")
    request = SampleRequest(n=n, sampler=sampler, steps=steps, guidance=guidance, cond=cond, seed=seed,
                            batch_size=batch_size, init=init, mask=mask, strength=strength, resample=resample,
                            interpolate=interpolate, progress=not no_progress)
    try:  # everything that can be checked before loading the model
        check_request(request, _registry(ctx))
        check_writable(Path(out), "--out")
        _check_no_earlier_samples(Path(out))
    except (ValueError, *UNWRITABLE) as error:
        raise click.ClickException(str(error)) from None
    world = distributed.world_from_env()
    try:
        torch_device = distributed.pick_device(device, world)
        distributed.init(world, torch_device)
        if seed is None:
            request.seed = distributed.broadcast_object(_fresh_seed(), world)
            if world.is_main:
                click.echo(f"seed: {request.seed} (pass --seed {request.seed} to repeat)")
        record = record_path(out)  # on every rank, so that all stop together when it exists
        model, saved = load_for_sampling(plugin_domain, source, torch_device)
        config = sampling_config(plugin_domain, saved, file=config_file, sets=list(sets))
        batch = generate(plugin_domain, model, config, request, device=torch_device, world=world,
                         registry=_registry(ctx))
        if world.is_main:
            written = plugin_domain.write_samples(batch, Path(out), config)
            write_record(record, _sample_record(plugin_domain, source, config, request, written, record,
                                                torch_device, _registry(ctx)))
            click.echo(f"wrote {len(written)} file(s) to {out}; how they were made: {record}")
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError,
            ckpt.CheckpointError, WorkerDied) as error:
        distributed.shutdown(world, wait=False)
        raise click.ClickException(_message(error)) from None
    distributed.shutdown(world)


def _domain_of_checkpoint(checkpoint: str | None) -> str:
    """The domain a checkpoint, run folder or exported folder was trained for (when --domain is left out)."""
    from . import checkpoint as ckpt

    if checkpoint is None:
        raise click.UsageError("give --domain (see `diffkit plugins`), or --checkpoint to sample from")
    try:
        return ckpt.load_sampling_state(checkpoint)["domain"]
    except (FileNotFoundError, ckpt.CheckpointError) as error:
        raise click.ClickException(_message(error)) from None


def _check_no_earlier_samples(out: Path) -> None:
    """Refuse, before any sampling, an output that already holds samples: a file, or a folder with
    the record of earlier samples (outputs are never overwritten)."""
    from .records import RECORD_NAME

    if out.is_file():
        raise ValueError(f"--out {str(out)!r} already exists; outputs are never overwritten: choose another --out")
    if out.is_dir() and any(out.glob(f"{RECORD_NAME}*.json")):
        raise ValueError(f"--out {str(out)!r} already holds samples (see its {RECORD_NAME}.json); outputs are never "
                         "overwritten: choose another --out")


def _fresh_seed() -> int:
    import secrets

    return secrets.randbelow(2**31)


def _sample_record(domain, source, config: dict, request, written: list, record: Path, device,
                   registry: Registry | None = None) -> dict:
    """What made these samples: enough to draw them again, and the files they are in."""
    from . import __version__
    from .generate import resolve_precision, sample_settings

    settings = sample_settings(config, request, registry.samplers if registry is not None else None, domain)
    made = {"domain": domain.name, "checkpoint": str(source), "seed": request.seed,
            "n": request.interpolate or request.n, "cond": request.cond}
    made.update({key: settings[key] for key in ("sampler", "steps", "spacing", "guidance")})
    made["precision"] = resolve_precision(settings["precision"], device)
    if request.init is not None:
        made.update(init=request.init, mask=request.mask, strength=request.strength, resample=settings["resample"])
    if request.interpolate:
        made["interpolate"] = request.interpolate
    made["sample_config"] = config["sample"]
    made["diffkit"] = __version__
    made["files"] = [_relative(Path(path), record.parent) for path in written]
    return made


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


@cli.command()
@click.option("--domain", required=True, help="The domain of the samples.")
@click.option("--samples", required=True, type=click.Path(exists=True), help="Samples written by `diffkit sample`.")
@click.option("--reference", default=None, type=click.Path(exists=True), help="Reference data (the domain's bundled data when omitted).")
@click.option("--checkpoint", default=None, help="Read the settings (e.g. the image size) from this checkpoint, run folder or exported folder.")
@click.option("--preset", default=None, help="Or read them from this preset of the domain.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="Or from this TOML file (over the preset).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one setting (repeatable).")
@click.option("--cond", default=None, help="The condition the samples were asked for, as `sample --cond` takes it (default: from their record).")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.pass_context
def evaluate(ctx, domain, samples, reference, checkpoint, preset, config_file, sets, cond, as_json):
    """Score samples against reference data with the domain's metrics.

    The settings the samples were made with (sizes, rates, ...) come from --checkpoint, or from
    --preset, or are the domain's defaults; --config and --set change them. The condition they were asked for comes
    from --cond, or from the record `diffkit sample` wrote beside them.
    """
    from . import checkpoint as ckpt
    from .config import apply_user_layers, default_config, limits_of, resolve_config
    from .loading import load_config
    from .records import read_record

    plugin_domain = _domain(ctx, domain)
    try:
        if checkpoint:
            if preset:
                raise ValueError("--preset does not go with --checkpoint: the settings are the checkpoint's, "
                                 "which --config and --set change")
            config = apply_user_layers(load_config(plugin_domain, checkpoint), default_config(plugin_domain),
                                       file=config_file, sets=list(sets), limits=limits_of(plugin_domain))
        else:
            config = resolve_config(plugin_domain, preset=preset, file=config_file, sets=list(sets))
        if cond is None:
            cond = (read_record(samples) or {}).get("cond")
        scores = _evaluate(plugin_domain, Path(samples), Path(reference) if reference else None, config, cond)
    except (KeyError, ValueError, FileNotFoundError, NotImplementedError, ckpt.CheckpointError) as error:
        raise click.ClickException(_message(error)) from None
    if as_json:
        click.echo(json.dumps(scores, indent=2))
        return
    width = max((len(name) for name in scores), default=0)
    for name, value in scores.items():
        click.echo(f"{name.ljust(width)}  {value:.4f}" if isinstance(value, float) else f"{name.ljust(width)}  {value}")


def _evaluate(domain, samples: Path, reference: Path | None, config: dict, cond):
    """``domain.evaluate``, told the asked condition when it takes ``cond``."""
    from .domain import accepted_keywords

    return domain.evaluate(samples, reference, config, **accepted_keywords(domain.evaluate, cond=cond))


@cli.command()
@click.argument("source")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The folder to create; refused when it exists and is not empty.")
@click.option("--card", "card_file", type=click.Path(dir_okay=False), default=None,
              help="A JSON file of model-card facts: data, data_license, training_command, hardware, scores, "
                   "scores_setup, license, notes.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="A sampling setting the folder ships with, e.g. --set sample.steps=20 (repeatable; sample.* only).")
def export(source, out, card_file, sets):
    """Write the weights of SOURCE as a portable folder: model.safetensors (the EMA weights),
    config.json (config, provenance, SHA-256 of the weights) and README.md (the model card); a
    diffusion on an autoencoder's latents also autoencoder.safetensors, with its own SHA-256.

    SOURCE is a run folder (its latest checkpoint), a checkpoint file or an exported folder.
    `diffkit sample --checkpoint OUT` and `diffkit.load(OUT)` read the folder.
    """
    from . import checkpoint as ckpt
    from . import pretrained

    try:
        card = pretrained.read_card_file(card_file) if card_file else None
        folder = pretrained.export(source, out, card, sets)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, *UNWRITABLE, ckpt.CheckpointError) as error:
        raise click.ClickException(_message(error)) from None
    click.echo(f"wrote {folder}: {', '.join(sorted(path.name for path in Path(folder).iterdir()))}")


@cli.command()
@click.option("--domain", required=True, help="The domain of the teacher and the student (see `diffkit plugins`).")
@click.option("--checkpoint", default=None, help="The teacher: a run folder (its latest checkpoint), a checkpoint file or an exported weights folder; the domain's shipped weights when omitted.")
@click.option("--student-steps", type=int, default=None, help="Model calls the student samples with (its sample.steps); required unless --resume.")
@click.option("--spacing", type=click.Choice(["uniform", "quadratic", "log_snr", "karras", "trimmed"]), default="uniform", show_default=True,
              help="Where the student's steps lie in time (its sample.spacing).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder for the student's checkpoints, logs and previews.")
@click.option("--data", default=None, help="The data whose noised versions the student learns on (as the domain reads it); the domain's bundled data when omitted.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="A TOML file of settings over the teacher's (e.g. sections train and distill).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one setting, e.g. --set distill.teacher_substeps=8 (repeatable).")
@click.option("--steps", type=int, default=None, help="Number of optimizer steps (train.steps).")
@click.option("--batch-size", type=int, default=None, help="Global batch size, split across processes (train.batch_size).")
@click.option("--seed", type=int, default=None, help="Random seed (train.seed).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue the distillation in --out from its latest checkpoint, with its own teacher and settings.")
@click.option("--compile", "compile_model", is_flag=True, help="Compile the student with torch.compile (train.compile).")
@click.option("--parallel", type=click.Choice(["ddp", "fsdp"]), default=None,
              help="Under torchrun: ddp replicates the student on every process, fsdp shards it (train.parallel); "
                   "the frozen teacher is replicated either way.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.pass_context
def distill(ctx, domain, checkpoint, student_steps, spacing, out, data, config_file, sets, steps, batch_size, seed,
            device, resume, compile_model, parallel, no_progress):
    """Distill a trained model into a student that samples in --student-steps model calls.

    The student starts from the teacher's weights and learns, for each of its DDIM steps, where
    the teacher's solver lands over the same stretch of time in several calls (see
    docs/concepts.md). It is a run folder like any other: `diffkit sample --checkpoint OUT`
    samples with the student's steps by default, and `diffkit export` and `diffkit.load` read it.
    """
    from . import checkpoint as ckpt
    from .distill import distill as run_distillation, load_teacher, student_config
    from .runner import TrainingError, TrainingInterrupted

    plugin_domain = _domain(ctx, domain)
    overrides = _training_overrides(steps, batch_size, seed, compile_model, parallel)
    run_dir = Path(out)
    try:
        check_writable(run_dir, "--out")
        if resume:
            if checkpoint or student_steps is not None:
                raise ValueError("--checkpoint and --student-steps cannot be combined with --resume: the run keeps "
                                 "its own teacher and steps")
            _check_something_to_resume(ctx, run_dir)
            config, data = _resume_settings(plugin_domain, run_dir, data, config_file, sets, overrides, None)
            if not config["distill"]["teacher"]:
                raise ValueError(f"{str(run_dir)!r} holds a run of `diffkit train`, not a distillation; resume it with: "
                                 f"diffkit train --domain {domain} --out {run_dir} --resume")
        else:
            if student_steps is None:
                raise ValueError("--student-steps is required: how many model calls the student samples with")
            if student_steps < 1:
                raise ValueError(f"--student-steps must be at least 1, got {student_steps}")
            _, teacher_config, info = load_teacher(plugin_domain, checkpoint)
            config = student_config(plugin_domain, teacher_config, info["source"], student_steps, spacing=spacing,
                                    file=config_file, sets=list(sets), overrides=overrides)
        result = run_distillation(plugin_domain, config, out=run_dir, data=data, resume=resume, device=device,
                                  progress=not no_progress, plugin=_plugin_of(ctx, domain), registry=_registry(ctx))
    except (KeyError, ValueError, FileNotFoundError, *UNWRITABLE, TrainingError, ckpt.CheckpointError) as error:
        raise click.ClickException(_message(error)) from None
    except TrainingInterrupted as interrupted:
        click.echo(str(interrupted), err=True)
        ctx.exit(130)
    loss = f", final loss {result.loss:.4f}" if result.loss is not None else ""
    click.echo(f"distilled {result.step} steps{loss}; the student samples in {_calls(config)}; "
               f"run folder: {result.run_dir}")


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Where to create the package folder diffkit-NAME.")
@click.option("--kind", type=click.Choice(["gaussian", "categorical", "tabular"]), default="gaussian", show_default=True,
              help="gaussian: numeric sequences (CSV) by Gaussian diffusion; categorical: token sequences "
                   "(FASTA, bases A C G T) by categorical diffusion; tabular: tables of numeric and categorical "
                   "columns (CSV), each kind of column by its own process, one model for the row.")
def new_plugin(name, directory, kind):
    """Create a working plugin package for a new domain called NAME.

    The package (module, pyproject with its entry point, tests, README) installs with
    `pip install -e .`, shows in `diffkit plugins`, trains, and passes its own tests as it is.
    """
    from .scaffold import create_plugin

    try:
        root = create_plugin(name, directory, kind)
    except (ValueError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"created {root}\nnext: cd {root} && pip install -e \".[dev]\" && python -m pytest")


def add_option_alias(cli: click.Group, command: str, option: str, alias: str) -> None:
    """Give ``option`` of ``command`` another name, e.g. a domain's own word for ``--init``; for
    plugins, from their ``diffkit_cli_commands`` hook. A name that another option has is refused;
    adding the same alias again changes nothing."""
    target = cli.commands[command]
    matches = [param for param in target.params if option in getattr(param, "opts", [])]
    if not matches:
        raise ValueError(f"`diffkit {command}` has no option {option!r}")
    if alias in matches[0].opts:
        return
    taken = {name for param in target.params for name in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
    if alias in taken:
        raise ValueError(f"the option name {alias!r} of `diffkit {command}` is taken")
    matches[0].opts.append(alias)


def _message(error: BaseException) -> str:
    # KeyError quotes its message; show it as written.
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def main() -> None:
    cli(prog_name="diffkit")


if __name__ == "__main__":
    main()
    sys.exit(0)
