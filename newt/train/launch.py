"""Starting a one-process training child here without the `accelerate launch` process in between.

For one process on one machine with no accelerate config, `accelerate launch` is its simple launcher: a Python
process that imports torch and accelerate only to set a few environment variables (`ACCELERATE_USE_CPU`,
`ACCELERATE_MIXED_PRECISION`, `ACCELERATE_DYNAMO_*`, `OMP_NUM_THREADS`, the KMP settings on CPU) and start
`python -m newt.train.<method>` with them. That process costs a whole Python and torch start-up before the child
starts its own (docs/performance.md). A local launch therefore starts the child itself, with the environment
accelerate's own `prepare_simple_launcher_cmd_env` builds from the same launch arguments, parsed by accelerate's
own parser: accelerate still decides what the child's environment is, only its process is skipped.

Every other launch (several processes or machines, a config file, DeepSpeed, FSDP, or a default accelerate config
on a machine where the launch is not `--cpu`) runs the command unchanged: accelerate's other launchers do more
than set variables. `start` is what both local launchers call: it applies `direct`, then runs a one-process
CPU child as a fork of the warm training process (newt/train/warm.py) and anything else as a fresh process. Pods and Ray workers get the unchanged command too (resources/launcher.py): their environment
is theirs to decide, not this machine's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

LAUNCH_MODULE = "accelerate.commands.launch"


def direct(cmd: list[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(command, environment) that start `cmd`'s training child the way `accelerate launch` would: the child
    itself with accelerate's simple-launcher variables added to `env` when that is all the launcher would do,
    else `cmd` and `env` unchanged."""
    if cmd[1:3] != ["-m", LAUNCH_MODULE]:
        return list(cmd), dict(env)
    from accelerate.commands.config import default_config_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import prepare_simple_launcher_cmd_env

    args = launch_command_parser().parse_args(cmd[3:])
    distributed = (args.multi_gpu, args.tpu, args.use_deepspeed, args.use_fsdp, args.use_megatron_lm,
                   args.mpirun_hostfile, args.config_file)
    # Without --cpu, `accelerate launch` reads the machine's default config file (`accelerate config`), which
    # may make the launch distributed: then the launcher must read it itself.
    if any(distributed) or args.num_processes != 1 or args.num_machines != 1 or args.mixed_precision is None or (
        not args.cpu and os.path.isfile(default_config_file)
    ):
        return list(cmd), dict(env)
    # What accelerate's launch validation fills in for a launch without a config file (accelerate 1.15,
    # commands/launch.py `_validate_launch_command`): no debug mode, `use_cpu` from --cpu, and one thread per
    # process from OMP_NUM_THREADS, else on CPU the machine's physical cores.
    args.debug = bool(args.debug)
    args.use_cpu = args.cpu
    if args.num_cpu_threads_per_process is None:
        args.num_cpu_threads_per_process = _int(env.get("OMP_NUM_THREADS"), 1)
        if args.use_cpu and _int(env.get("OMP_NUM_THREADS"), 0) == 0:
            import psutil

            args.num_cpu_threads_per_process = max(args.num_cpu_threads_per_process,
                                                   int(psutil.cpu_count(logical=False) or 1))
    child, launcher_env = prepare_simple_launcher_cmd_env(args)
    # The launcher starts from its own environment (ours, here os.environ); what it adds or changes goes onto
    # `env`, the environment the child is given.
    added = {k: v for k, v in launcher_env.items() if os.environ.get(k) != v}
    return [cmd[0], *child[1:]], {**env, **added}


def start(cmd: list[str], env: Mapping[str, str]):
    """Start `cmd` on this machine: (process handle for `lifetime.stop`, the command that runs). One process on
    the CPU runs as a fork of the warm training process (newt/train/warm.py); anything else, or when that cannot
    start, as a process of its own in its own group."""
    from newt.train.lifetime import start as start_fresh
    from newt.train.warm import start as start_warm

    cmd, env = direct(cmd, env)
    # accelerate's own launcher (several processes, a config file, ...) starts the ranks itself, fresh: nothing
    # to gain from forking it.
    child = start_warm(cmd, env) if cmd[1:3] != ["-m", LAUNCH_MODULE] else None
    return (child if child is not None else start_fresh(cmd, env)), cmd


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default
