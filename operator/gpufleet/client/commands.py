"""The user's sub-commands of ``gpufleet`` (and of ``kubectl gpufleet``): submit, get, list,
describe, wait, cancel, delete, cp, url, top, dashboard and completion.

Exit codes: 0 done (a job Succeeded); 1 a job Failed, was Cancelled or is Stalled; 2 the
command could not run (bad input, unknown job, no permission, no S3 credentials).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from gpufleet.api.models import GROUP, GenerationJob, to_manifest
from gpufleet.client import render
from gpufleet.client.errors import ClientError
from gpufleet.client.jobs import Client, finished, name_of, succeeded
from gpufleet.client.manifests import parse_jobs, read_source

EXIT_OK = 0
EXIT_JOB_UNSUCCESSFUL = 1
EXIT_ERROR = 2
OUTPUTS = ("json", "yaml", "name")
NAME_PREFIXES = ("gj/", "genjob/", "generationjob/", "generationjobs/", f"generationjob.{GROUP}/")
COMMANDS = (
    "submit",
    "get",
    "list",
    "describe",
    "wait",
    "cancel",
    "delete",
    "cp",
    "url",
    "top",
    "dashboard",
    "completion",
)


def job_name(argument: str) -> str:
    """NAME from NAME, gj/NAME or generationjob.gpufleet.io/NAME."""
    for prefix in NAME_PREFIXES:
        if argument.startswith(prefix):
            return argument[len(prefix) :]
    if "/" in argument:
        raise ClientError(f"{argument!r}: not a GenerationJob; write NAME or gj/NAME")
    return argument


def _now() -> datetime:
    return datetime.now(UTC)


def _client(args: argparse.Namespace) -> Client:
    return Client(namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context)


def _print_objects(jobs: list[GenerationJob], output: str) -> None:
    if output == "name":
        for job in jobs:
            print(f"generationjob.{GROUP}/{name_of(job)}")
        return
    manifests = [to_manifest(job) for job in jobs]
    document: Any = (
        manifests[0] if len(manifests) == 1 else {"apiVersion": "v1", "kind": "List", "items": manifests}
    )
    if output == "json":
        print(json.dumps(document, indent=2))
    else:
        print(yaml.safe_dump(document, sort_keys=False), end="")


class ProgressBoard:
    """Live lines, one per job, redrawn in place on a terminal; appended elsewhere."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines: dict[str, str] = {}
        self.drawn = 0
        self.tty = stream.isatty()

    def update(self, job: GenerationJob) -> None:
        line = render.progress_line(job)
        name = name_of(job)
        if self.lines.get(name) == line:
            return
        self.lines[name] = line
        if not self.tty:
            print(line, file=self.stream, flush=True)
            return
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}A")
        for text in self.lines.values():
            self.stream.write(f"\r\x1b[K{text}\n")
        self.drawn = len(self.lines)
        self.stream.flush()


def _follow(
    client: Client, names: list[str], timeout: float | None, board: ProgressBoard | None, out: TextIO
) -> int:
    """Waits for the jobs (drawing their progress); prints each outcome to ``out``; the exit code."""
    final: dict[str, GenerationJob] = {}
    for job in client.watch(names, timeout):
        if board is not None:
            board.update(job)
        if finished(job):
            final[name_of(job)] = job
    for name in names:
        print(render.outcome_line(final[name]), file=out, flush=True)
    return EXIT_OK if all(succeeded(j) for j in final.values()) else EXIT_JOB_UNSUCCESSFUL


def submit(args: argparse.Namespace) -> int:
    text, source = read_source(args.filename)
    documents = parse_jobs(text, source)
    client = _client(args)
    # Like kubectl: the manifests' namespace, when they name one, must be the one asked for.
    named = {d["metadata"]["namespace"] for d in documents if d["metadata"].get("namespace")}
    if len(named) > 1:
        raise ClientError(
            f"{source}: the jobs name several namespaces ({', '.join(sorted(named))}); submit one at a time"
        )
    if named:
        [namespace] = named
        if args.namespace and args.namespace != namespace:
            raise ClientError(
                f'{source}: metadata.namespace "{namespace}" does not match -n "{args.namespace}"'
            )
        client.namespace = namespace
    created = [client.submit(document) for document in documents]
    names = [name_of(job) for job in created]
    if not (args.watch or args.wait):
        if args.output:
            _print_objects(created, args.output)
        else:
            for name in names:
                print(f"generationjob.{GROUP}/{name} created")
        return EXIT_OK
    # With -o the objects alone go to stdout, for a pipe; everything else to stderr.
    messages = sys.stderr if args.output else sys.stdout
    for name in names:
        print(f"generationjob.{GROUP}/{name} created", file=messages)
    board = ProgressBoard(messages) if args.watch else None
    code = _follow(client, names, args.timeout, board, messages)
    if args.output:
        _print_objects([client.get(name) for name in names], args.output)
    return code


def get(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.names:
        jobs = [client.get(job_name(n)) for n in args.names]
    else:
        jobs = client.jobs(all_namespaces=args.all_namespaces, label_selector=args.selector or "")
    if args.output in OUTPUTS:
        if not jobs and args.output != "name":
            _print_list_empty(args.output)
        elif jobs:
            _print_objects(jobs, args.output)
        return EXIT_OK
    if not jobs:
        where = "any namespace" if args.all_namespaces else f'namespace "{client.namespace}"'
        print(f"No GenerationJobs found in {where}.", file=sys.stderr)
        return EXIT_OK
    print(render.job_rows(jobs, _now(), args.all_namespaces, wide=args.output == "wide"))
    return EXIT_OK


def _print_list_empty(output: str) -> None:
    empty = {"apiVersion": "v1", "kind": "List", "items": []}
    print(
        json.dumps(empty, indent=2) if output == "json" else yaml.safe_dump(empty),
        end="\n" if output == "json" else "",
    )


def describe(args: argparse.Namespace) -> int:
    client = _client(args)
    blocks = []
    for argument in args.names:
        name = job_name(argument)
        blocks.append(render.describe(client.get(name), client.events(name), _now()))
    print("\n\n".join(blocks))
    return EXIT_OK


def wait(args: argparse.Namespace) -> int:
    client = _client(args)
    return _follow(client, [job_name(n) for n in args.names], args.timeout, None, sys.stdout)


def cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    for argument in args.names:
        job = client.cancel(job_name(argument))
        print(f"generationjob.{GROUP}/{name_of(job)} cancel requested")
    return EXIT_OK


def delete(args: argparse.Namespace) -> int:
    client = _client(args)
    for argument in args.names:
        name = job_name(argument)
        client.delete(name)
        print(f'generationjob.{GROUP} "{name}" deleted')
    return EXIT_OK


def _s3_settings(args: argparse.Namespace) -> Any:
    from gpufleet.client.artifacts import S3Settings  # boto3 only for the commands that use it

    return S3Settings(
        endpoint_url=args.s3_endpoint,
        access_key_id=args.s3_access_key_id,
        secret_access_key=args.s3_secret_access_key,
        region=args.s3_region,
    )


def copy(args: argparse.Namespace) -> int:
    client = _client(args)
    settings = _s3_settings(args)
    for path in client.download(job_name(args.job), Path(args.directory), settings):
        print(f"{path} (sha256 verified)")
    return EXIT_OK


def url(args: argparse.Namespace) -> int:
    from gpufleet.client.artifacts import presigned_url

    client = _client(args)
    job = client.get(job_name(args.job))
    print(presigned_url(job, args.artifact, _s3_settings(args), args.expires))
    return EXIT_OK


def top(args: argparse.Namespace) -> int:
    client = _client(args)
    tty = sys.stdout.isatty()
    while True:
        screen = render.top(client.pools(args.all_namespaces), client.jobs(args.all_namespaces), _now())
        if tty and not args.once:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(screen, flush=True)
        if args.once:
            return EXIT_OK
        time.sleep(args.interval)  # a display refresh, not a synchronisation


def dashboard(args: argparse.Namespace) -> int:
    from gpufleet.client.dashboard import serve

    return serve(
        _client(args), args.all_namespaces, args.address, args.port, _s3_settings(args), args.allowed_host
    )


def completion(args: argparse.Namespace) -> int:
    print(completion_script(args.shell, args.parser))
    return EXIT_OK


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """A bash (or zsh, through bashcompinit) completion of sub-commands, flags and job names."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = []
    for name, sub in subparsers.choices.items():
        flags = sorted(o for a in sub._actions for o in a.option_strings)
        cases.append(f'    {name}) flags="{" ".join(flags)}" ;;')
    job_commands = "get|describe|wait|cancel|delete|cp|url"
    script = f"""# gpufleet completion ({shell}); load with: source <(gpufleet completion {shell})
_gpufleet() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} command=${{COMP_WORDS[1]}} flags=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "{" ".join(subparsers.choices)}" -- "$cur"))
    return
  fi
  case "$command" in
{chr(10).join(cases)}
  esac
  case "$cur" in
    -*) COMPREPLY=($(compgen -W "$flags" -- "$cur")) ;;
    *)
      case "$command" in
        submit) COMPREPLY=($(compgen -f -- "$cur")) ;;
        {job_commands})
          local names
          names=$(gpufleet list -o name 2>/dev/null | sed 's|^generationjob.{GROUP}/||')
          COMPREPLY=($(compgen -W "$names" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
      esac ;;
  esac
}}
complete -F _gpufleet gpufleet kubectl-gpufleet
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig context's)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def _s3_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--s3-access-key-id", help="default: $AWS_ACCESS_KEY_ID or the AWS profile")
    parser.add_argument("--s3-secret-access-key", help="default: $AWS_SECRET_ACCESS_KEY or the AWS profile")
    parser.add_argument("--s3-region", help="default: $AWS_REGION, else us-east-1")


def add_commands(commands: argparse._SubParsersAction, root: argparse.ArgumentParser) -> None:
    """Adds the user's sub-commands to the ``gpufleet`` parser."""

    def command(name: str, run: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_, description=help_)
        _common(parser)
        parser.set_defaults(func=run)
        return parser

    def names(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("names", nargs="+", metavar="NAME", help="job name, or gj/NAME")

    def timeout(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--timeout", type=float, help="give up after this many seconds (default: never)")

    p = command("submit", submit, "create GenerationJobs from a manifest; optionally follow them")
    p.add_argument(
        "-f", "--filename", required=True, help="manifest file (YAML, several documents allowed) or -"
    )
    follow = p.add_mutually_exclusive_group()
    follow.add_argument("--watch", "-w", action="store_true", help="live progress until every job finished")
    follow.add_argument("--wait", action="store_true", help="wait until every job finished, without progress")
    p.add_argument("-o", "--output", choices=OUTPUTS, help="print the jobs as json, yaml or names")
    timeout(p)
    for name, help_ in (
        ("get", "show jobs (all of the namespace without NAME)"),
        ("list", "list the namespace's jobs"),
    ):
        p = command(name, get, help_)
        if name == "get":
            p.add_argument("names", nargs="*", metavar="NAME")
        else:
            p.set_defaults(names=[])
        p.add_argument("-A", "--all-namespaces", action="store_true")
        p.add_argument("-l", "--selector", help="label selector")
        p.add_argument("-o", "--output", choices=(*OUTPUTS, "wide"))
    p = command("describe", describe, "a job's status, conditions, artifacts and events")
    names(p)
    p = command("wait", wait, "wait until jobs finished; exit 0 if all Succeeded")
    names(p)
    timeout(p)
    p = command("cancel", cancel, "stop jobs (sets spec.cancel)")
    names(p)
    p = command("delete", delete, "delete jobs")
    names(p)
    p = command("cp", copy, "download a job's artifacts into DIR, verifying each sha256")
    p.add_argument("job", metavar="gj/NAME")
    p.add_argument("directory", metavar="DIR")
    _s3_flags(p)
    p = command("url", url, "print a presigned URL of one artifact")
    p.add_argument("job", metavar="gj/NAME")
    p.add_argument("artifact", metavar="ARTIFACT", help="the artifact's name, e.g. image-0.png")
    p.add_argument("--expires", type=int, default=3600, help="seconds the URL stays valid (default: 3600)")
    _s3_flags(p)
    p = command("top", top, "pools, workers and GPUs (VRAM of jobs, models, free) and queues, refreshing")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print once and exit")
    p = command("dashboard", dashboard, "serve a live web page of pools, GPUs, models, the queue and jobs")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="also answer requests for this Host (the name a port-forward or an ingress uses); repeatable",
    )
    _s3_flags(p)
    p = commands.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=completion, parser=root)


def run(args: argparse.Namespace) -> int:
    """Runs a user command; a ClientError becomes one line on stderr and exit code 2."""
    try:
        return int(args.func(args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def is_user_command(name: str) -> bool:
    return name in COMMANDS
