"""Training across several machines: the `accelerate launch` flags that make one machine's launch one node of N.

accelerate counts `--num_processes` over ALL machines (accelerate/utils/launch.py: nproc_per_node = num_processes //
num_machines), while the recipe's `num_processes` is per machine (one per GPU of the machine, as the Kubernetes pod
asks for them). So a node's launch gets `num_processes x num_machines`, its `--machine_rank`, and the address and
port of machine 0, where torch's static rendezvous meets. Every node runs the same command otherwise.

Where the machine settings come from: the recipe (`num_machines`, `machine_rank`, `main_process_ip`,
`main_process_port`), or, for the last three, the user's accelerate config file when the recipe leaves them unset.
`num_machines` must be the recipe's: it sets the world size, which keys the `trained` stage, so a file that says
otherwise is an error rather than a silent change of the global batch.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from newt.config import Recipe

# accelerate's default rendezvous port; several machines must agree on one, so a free port picked here is no use.
DEFAULT_PORT = 29500


class MachineError(ValueError):
    pass


def config_file_machines(path: Path | None) -> dict[str, object]:
    """The machine keys of an accelerate config file (empty without a file)."""
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    return {k: data[k] for k in ("num_machines", "machine_rank", "main_process_ip", "main_process_port") if k in data}


def machine_args(recipe: Recipe, config_file: Path | None = None) -> list[str]:
    """`--num_processes ... --num_machines ...` and, on several machines, the rank and rendezvous flags.

    With `launcher: ray` the rank, address and port are left out: the Ray launcher knows them only once its
    workers are placed, and adds them per node (`for_machine`)."""
    from_file = config_file_machines(config_file)
    n = recipe.num_machines
    if int(from_file.get("num_machines", n)) != n:
        raise MachineError(
            f"accelerate_config {config_file} has num_machines: {from_file['num_machines']} but the recipe has "
            f"num_machines: {n}; set num_machines in the recipe (it sets the world size, which keys `trained`)")
    args = ["--num_processes", str(recipe.num_processes * n), "--num_machines", str(n)]
    if n == 1 or recipe.launcher == "ray":
        return args
    ip = recipe.main_process_ip or from_file.get("main_process_ip")
    if not ip:
        raise MachineError(f"num_machines: {n} needs main_process_ip (in the recipe or {config_file}): the address "
                           "of machine 0 that every machine reaches")
    rank = recipe.machine_rank if recipe.machine_rank or "machine_rank" not in from_file else from_file["machine_rank"]
    port = recipe.main_process_port or from_file.get("main_process_port") or DEFAULT_PORT
    return [*args, "--machine_rank", str(rank), "--main_process_ip", str(ip), "--main_process_port", str(port)]


def for_machine(cmd: list[str], machine_rank: int, main_process_ip: str, main_process_port: int) -> list[str]:
    """An `accelerate launch` command made into one node's: the flags go before the training module (`-m ...`),
    after any the command has; argparse keeps the last value of a repeated flag."""
    launch = cmd.index("accelerate.commands.launch")
    module = cmd.index("-m", launch + 1)
    flags = ["--machine_rank", str(machine_rank), "--main_process_ip", main_process_ip,
             "--main_process_port", str(main_process_port)]
    return [*cmd[:module], *flags, *cmd[module:]]
