"""The `trained` stage's child on a Ray cluster: one `accelerate launch` per node, restarted from the last
checkpoint when a worker or a node dies.

Why a launch per node rather than Ray Train's `TorchTrainer`: the child stays the same program everywhere
(`accelerate launch -m newt.train.sft ...`, the command `newt.train` builds), so presets, FSDP/DeepSpeed configs,
Pipes reporting on rank 0 and checkpoint resume behave as with the local launcher; `TorchTrainer` would run the
training function inside Ray's own worker group and process group instead, a second way to train.

How: a placement group with one bundle per machine, `STRICT_SPREAD` so no two machines share a node; an actor in
each bundle (`NodeAgent`) reports its node and starts the node's launch with its machine rank, machine 0's
address and a port free there (`newt.train.multinode.for_machine`). The driver waits for all of them. When one
exits non-zero or its actor dies (its node went away), the others are stopped and the whole group starts again,
up to `ray_max_restarts` times; the child resumes from the newest complete checkpoint in the work folder.

The work folder (the `--output` of the command) must be one shared folder at the same path on every node and on
the machine that runs the stage (docs/scaling.md): rank 0 writes the checkpoints and metrics there, and every rank
resumes from them. Each attempt is recorded in `<work>/launch.json` (machine rank, Ray node id, address, process
ids); the Dagster launcher puts its Pipes message file there too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from newt.config import Recipe
from newt.train.multinode import for_machine

PLACEMENT_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
# Pipes variables go to machine 0 only: the child opens Pipes on global rank 0 (newt/train/report.py), no other
# machine needs them, and a node far from Dagster should not be handed its message channel.
RANK0_ONLY = ("DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES")


class RayLaunchError(RuntimeError):
    pass


def address_from_env() -> str:
    """`NEWT_LAUNCHER=ray://HOST:PORT` (Ray Client) or `ray` with RAY_ADDRESS (`HOST:PORT` of the head's GCS)."""
    launcher = os.environ.get("NEWT_LAUNCHER", "")
    if launcher.startswith("ray://"):
        return launcher
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        raise RayLaunchError("launcher: ray needs the cluster's address: set RAY_ADDRESS=HOST:PORT (the head's "
                             "`ray start --head --port`) or NEWT_LAUNCHER=ray://HOST:PORT (Ray Client)")
    return address


class NodeAgent:
    """One machine's part (a Ray actor): where it runs, and its `accelerate launch` as a process group."""

    def __init__(self) -> None:
        self.proc = None

    def where(self) -> dict[str, Any]:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "agent_pid": os.getpid()}

    def free_port(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def start(self, cmd: list[str], env: dict[str, str]) -> int:
        import subprocess

        # Its own session: stop() signals the launcher and, through torch's agent, its training processes.
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        return self.proc.pid

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self) -> None:
        """SIGTERM the launch and every process under it (torch's agent starts workers in sessions of their own),
        SIGKILL what is left after a grace period."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=STOP_GRACE_S)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


class RayRun:
    """Runs a recipe's training command on the Ray cluster, `recipe.num_machines` nodes wide."""

    def __init__(self, recipe: Recipe, address: str | None = None, log: Any = print):
        self.recipe = recipe
        self.address = address
        self.log = log

    def launch(self, cmd: list[str], env: dict[str, str]) -> None:
        import ray

        output = Path(cmd[cmd.index("--output") + 1])
        address = self.address or address_from_env()
        ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
        try:
            attempts: list[dict[str, Any]] = []
            for attempt in range(self.recipe.ray_max_restarts + 1):
                failure = self._attempt(cmd, env, output, attempts)
                if failure is None:
                    return
                self.log(f"ray: attempt {attempt + 1} failed ({failure})"
                         + ("; restarting from the last checkpoint" if attempt < self.recipe.ray_max_restarts else ""))
            raise RayLaunchError(f"training on the Ray cluster at {address} failed {len(attempts)} times "
                                 f"(ray_max_restarts: {self.recipe.ray_max_restarts}); last: {failure}. "
                                 f"Attempts: {output / 'launch.json'}")
        finally:
            ray.shutdown()

    def _attempt(self, cmd: list[str], env: dict[str, str], output: Path, attempts: list) -> str | None:
        """One try with a fresh placement group and fresh actors; None when every machine finished cleanly."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n = self.recipe.num_machines
        gpus = ray.cluster_resources().get("GPU", 0)
        bundle = {"CPU": 1, **({"GPU": self.recipe.num_processes} if gpus else {})}
        pg = placement_group([bundle] * n, strategy="STRICT_SPREAD")
        agents: list[Any] = []
        try:
            try:
                ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:  # a cluster too small stays too small: no restart
                nodes = [x["Resources"] for x in ray.nodes() if x["Alive"]]
                raise RayLaunchError(
                    f"the Ray cluster did not give {n} nodes with {bundle} each (one node per machine, "
                    f"num_machines: {n}) within {PLACEMENT_TIMEOUT_S:.0f} s; alive nodes: {nodes}. Add nodes or "
                    f"lower num_machines") from None
            actor = ray.remote(NodeAgent)
            agents = [actor.options(num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0), max_restarts=0,
                                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                                        pg, placement_group_bundle_index=i)).remote() for i in range(n)]
            where = ray.get([a.where.remote() for a in agents])
            port = ray.get(agents[0].free_port.remote())
            record: dict[str, Any] = {"attempt": len(attempts) + 1, "main_process_ip": where[0]["ip"],
                                      "main_process_port": port, "machines": []}
            for rank, (agent, at) in enumerate(zip(agents, where)):
                rank_env = env if rank == 0 else {k: v for k, v in env.items() if k not in RANK0_ONLY}
                node_cmd = for_machine(cmd, rank, where[0]["ip"], port)
                pid = ray.get(agent.start.remote(node_cmd, rank_env))
                record["machines"].append({"machine_rank": rank, **at, "launch_pid": pid})
            attempts.append(record)
            _write_json(output / "launch.json", {"launcher": "ray", "attempts": attempts})
            self.log("ray: " + ", ".join(f"machine {m['machine_rank']} on node {m['node_id'][:12]} ({m['ip']})"
                                         for m in record["machines"]))
            failure = self._wait(agents, record)
            _write_json(output / "launch.json", {"launcher": "ray", "attempts": attempts})
            return failure
        finally:
            for a in agents:
                try:
                    ray.get(a.stop.remote(), timeout=STOP_GRACE_S + 20)
                except (ray.exceptions.RayError, TimeoutError):
                    pass  # a dead actor's node is gone, and its processes with it
                ray.kill(a)
            remove_placement_group(pg)

    def _wait(self, agents: list[Any], record: dict[str, Any]) -> str | None:
        import ray

        pending = {a.wait.remote(): rank for rank, a in enumerate(agents)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            rank = pending.pop(done[0])
            try:
                code = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # the actor (its node, or its process) died
                record["failed"] = {"machine_rank": rank, "error": type(exc).__name__}
                return f"machine {rank}'s Ray worker died ({type(exc).__name__})"
            if code != 0:
                record["failed"] = {"machine_rank": rank, "exit_code": code}
                return f"machine {rank}'s training exited with code {code}"
        return None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)

