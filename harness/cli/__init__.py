"""The `amilab` command line: parses arguments and calls library functions, nothing more.

One module per command group registers its subcommands (build, images, disk, bundle, store,
launch, imds) through `command.add_command`; `groups` says under which heading `amilab --help`
lists each; `output` owns what is printed (--json, tables, ID lines) and `flags` the launch
settings every launching command shares.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

from builder import paths
from builder.errors import AmilabError
from builder.state import diskfull
from builder.steps import boundary
from harness.cli import (
    api,
    build,
    bundle,
    disk,
    images,
    imds,
    instances,
    kernel,
    launch,
    matrix,
    modules,
    results,
    space,
    state,
    store,
)
from harness.cli.command import Parser
from harness.cli.groups import METAVAR, CommandsParser

# the order of registration; `amilab --help` lists them by group (harness.cli.groups)
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    build.register_build,
    images.register_images,
    build.register_kernels,
    kernel.register_register_kernel,
    disk.register_convert,
    disk.register_inspect,
    disk.register_import,
    bundle.register_bundle,
    bundle.register_unbundle,
    bundle.register_register,
    bundle.register_upload_bundle,
    bundle.register_bundle_vol,
    store.register_store,
    store.register_store_tasks,
    store.register_restore,
    images.register_copy_image,
    modules.register_add_modules,
    modules.register_modules,
    images.register_deregister,
    images.register_tag,  # and untag
    images.register_launch_permission,
    launch.register_boot,
    launch.register_smoke,
    matrix.register_matrix,
    results.register_results,
    results.register_bisect,
    results.register_dashboard,
    imds.register_imds,
    instances.register_run_instances,
    instances.register_describe_instances,
    instances.register_stop_instances,
    instances.register_start_instances,
    instances.register_reboot_instances,
    instances.register_events,
    instances.register_terminate_instances,
    instances.register_modify_instance_attribute,
    instances.register_get_console_output,
    instances.register_ssh,
    instances.register_key_pairs,
    instances.register_volumes,
    instances.register_create_image,
    api.register_api,
    space.register_df,
    space.register_prune,
    state.register_fsck,
]


def make_parser() -> argparse.ArgumentParser:
    parser = CommandsParser(
        prog="amilab",
        description="Bake VM images from YAML recipes and boot them under QEMU as EC2 did AMIs.",
    )
    sub = parser.add_subparsers(dest="command", metavar=METAVAR, required=True, parser_class=Parser)
    for register in _COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        # fsck reports what a dead process left, df shows it and prune removes it only with
        # --yes (without, it removes nothing): the other commands mend it on their way in
        if args.command not in ("fsck", "df", "prune"):
            from builder.state.pending import recover_at_start

            recover_at_start()
        # the command's own work is one step for crash testing's trace (builder/steps.py)
        boundary("start", f"command-{args.command}")
        return int(args.func(args) or 0)
    except (AmilabError, OSError, subprocess.CalledProcessError) as e:
        # the last net for a full disk: whatever a writer did not translate itself
        full = diskfull.from_exception(e, paths.amilab_home(), f"amilab {args.command}'s files")
        if full is None and not isinstance(e, AmilabError):
            raise
        shown = full or e
        print(f"amilab: {shown}", file=sys.stderr)
        return shown.exit_code if isinstance(shown, AmilabError) else 1
    except KeyboardInterrupt:
        print("amilab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
