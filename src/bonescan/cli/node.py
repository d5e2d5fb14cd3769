"""`bonescan node`: the DICOM node; `bonescan node status`: its queue; `bonescan bench node`: its speed."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bonescan.node").setLevel(logging.INFO)
    # pynetdicom's own INFO/DEBUG lines can echo dataset contents; ours carry UIDs only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `node`, `node status` and `bench node` to the bonescan app."""
    node_app = typer.Typer(help="DICOM node: receive bone scans, read them, send the results to the PACS.")
    app.add_typer(node_app, name="node")

    @node_app.callback(invoke_without_command=True)
    def node(
        ctx: typer.Context,
        run: Optional[Path] = typer.Option(None, "--run", help="Training run folder whose network reads the scans."),
        lesions: Optional[Path] = typer.Option(
            None, "--lesions", help="Lesion run: the SR also holds hotspots and BSI, and a DICOM Segmentation per "
                                    "view (hotspots, skeletal regions) is sent with it."),
        followup: bool = typer.Option(
            False, "--followup", help="With --lesions: compare each study with the latest earlier study of its "
                                      "PatientID read here, and send the follow-up SR too; >= 2 new lesions are "
                                      "confirmed or not by the patient's next scan (PCWG3 2+2)."),
        change_net: Optional[Path] = typer.Option(
            None, "--change-net", help="With --followup: the change network (bonescan followup-train), a second "
                                       "judge of new lesions that sees both studies."),
        join: str = typer.Option("either", "--join", help="With --change-net: either (the larger of the rules' and "
                                 "the network's new-lesion counts), union (the rules' plus the network's lying on "
                                 "none of the lesions the rules judged) or network (its count)."),
        judge: Optional[Path] = typer.Option(
            None, "--judge", help="With --followup: a learned new-lesion judge (bonescan followup-judge) in the hand "
                                  "rules' place."),
        store: Optional[Path] = typer.Option(
            None, "--store", help="Folder for received instances, results and the durable queue."),
        keep_days: Optional[float] = typer.Option(
            None, "--keep-days", help="Remove a study's received instances and result files this many days after "
                                      "it was read and its results were sent (with --followup each patient's "
                                      "latest study is kept as the next scan's prior). Default: keep everything."),
        reserve_mb: float = typer.Option(
            500.0, "--reserve-mb", help="Free space (MB) that received instances leave on the store's disk for the "
                                        "results of the studies already received; an instance that would leave "
                                        "less is refused with Out of Resources, and the sender tries again later."),
        ae_title: str = typer.Option("BONESCAN", "--ae-title", help="The node's AE title."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default loopback only; "
                                                             "0.0.0.0 for every interface)."),
        port: int = typer.Option(11112, "--port", help="TCP port to listen on."),
        forward: Optional[str] = typer.Option(
            None, "--forward", help="Send results by C-STORE to AE@host:port (retried with backoff while down)."),
        allow: Optional[str] = typer.Option(
            None, "--allow", help="Comma-separated calling AE titles allowed to associate (default: any)."),
        tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) of the node."),
        tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="Private key (PEM) of --tls-cert."),
        tls_ca: Optional[Path] = typer.Option(
            None, "--tls-ca", help="Require callers' TLS certificates signed by this CA bundle (PEM)."),
        forward_tls_ca: Optional[Path] = typer.Option(
            None, "--forward-tls-ca", help="Send results over TLS, checking the destination's certificate with this "
                                           "CA bundle (PEM); --tls-cert is presented as the node's certificate."),
        complete_after: float = typer.Option(
            30.0, "--complete-after", help="Seconds after a study's last instance when it is read even with a "
                                           "view missing (it then fails with the reason)."),
        secondary_capture: bool = typer.Option(
            False, "--secondary-capture", help="Also accept Secondary Capture objects with modality NM."),
        operating_point: str = typer.Option(
            "youden", "--operating-point", help="Frozen threshold: youden | rule-out | rule-in | 0.5."),
        batch_size: int = typer.Option(
            1, "--batch-size", help="Most studies read in one batch. 1 gives the lowest latency on a CPU, where heat "
                                    "maps and DICOM writing outweigh the network; raise it on a GPU."),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto."),
        quiet: bool = typer.Option(False, "--quiet", help="Log warnings and errors only."),
    ) -> None:
        """Run the DICOM node (C-ECHO, C-STORE of NM images) until SIGTERM or Ctrl-C.

        Every received instance is on disk and in the queue before success is answered; a restart finishes
        what was pending. `bonescan node status --store DIR` shows the queue.
        """
        if ctx.invoked_subcommand is not None:
            return
        from ..node import Destination, Node, NodeConfig

        if run is None or store is None:
            raise ConfigError("bonescan node", "--run and --store are required to run the node")
        config = NodeConfig(
            run=run, store=store, ae_title=ae_title, host=host, port=port,
            forward=Destination.parse(forward) if forward else None,
            allow=tuple(t.strip() for t in (allow or "").split(",") if t.strip()),
            tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, forward_tls_ca=forward_tls_ca,
            complete_after=complete_after,
            accept_secondary_capture=secondary_capture, operating_point=operating_point, batch_size=batch_size,
            device=device, lesions=lesions, followup=followup, change_net=change_net, join=join, judge=judge,
            keep_days=keep_days, reserve_mb=reserve_mb,
        )
        _setup_logging(not quiet)
        if quiet:
            logging.getLogger("bonescan.node").setLevel(logging.WARNING)
        Node(config).serve_forever()

    @node_app.command("status")
    def status(
        store: Path = typer.Option(..., "--store", help="The node's --store folder."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
        recent: int = typer.Option(10, "--recent", help="Recent errors and warnings to list."),
    ) -> None:
        """Queue counts, throughput, latency and recent errors of a node's store (running or not)."""
        from ..node import format_status, node_status

        report = node_status(store, recent=recent)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            for line in format_status(report):
                typer.echo(line)

    @bench.command("node")
    def bench_node(
        cases: int = typer.Option(400, "--cases", help="Synthetic studies to send."),
        associations: int = typer.Option(4, "--associations", help="Concurrent associations (cameras) sending."),
        run: Optional[Path] = typer.Option(None, "--run", help="Use this run's network (default: untrained preset)."),
        preset: str = typer.Option("cpu-small", "--preset", help="Network of this preset, untrained (without --run)."),
        kills: int = typer.Option(0, "--kills", help="kill -9 and restart the node this many times during the run."),
        rate: float = typer.Option(0.0, "--rate", help="Offered load in studies/s over all associations "
                                                       "(0: as fast as the node takes them)."),
        data: Optional[Path] = typer.Option(
            None, "--data", help="Folder for the synthetic studies (kept for the next run; default: temporary)."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads of the node and the timing."),
        seed: int = typer.Option(0, "--seed", help="Seed of the synthetic studies and the untrained weights."),
        batch_size: int = typer.Option(1, "--batch-size", help="The node's --batch-size."),
        lesions: Optional[Path] = typer.Option(None, "--lesions", help="The node's --lesions (a lesion run)."),
        followup: bool = typer.Option(
            False, "--followup", help="The node's --followup: send the visits of followed patients in date order "
                                      "(--cases counts studies, whole patients); later visits reported apart."),
        change_net: Optional[Path] = typer.Option(
            None, "--change-net", help="With --followup: the node's --change-net (bonescan followup-train)."),
        join: str = typer.Option("either", "--join", help="With --change-net: the node's --join."),
        judge: Optional[Path] = typer.Option(None, "--judge", help="With --followup: the node's --judge (bonescan "
                                             "followup-judge)."),
    ) -> None:
        """Studies per minute and first-byte-to-result latency (median, p95) through a node subprocess."""
        from ..node.bench import benchmark_node

        result = benchmark_node(cases=cases, associations=associations, run=run, preset=preset, kills=kills,
                                rate=rate, data=data, seed=seed, threads=threads, batch_size=batch_size,
                                lesions=lesions, followup=followup, change_net=change_net, join=join, judge=judge,
                                progress=lambda message: print(f"bench node: {message}", file=sys.stderr, flush=True))
        for line in result.lines():
            typer.echo(line)
