"""EC2's instance operations over the registry and the supervisors, one module per family:
`launch` (run, start, reboot), `stop` (stop, terminate, scheduled events), `describe`
(describe, status, console output, SSH), `attachments` (attach/detach), `images`
(create-image, bundle-vol), and what they share in `common`. The CLI and the API
server call these; each returns AWS-shaped data and refuses with EC2's error code (exit 2).

Each operation on an instance holds that instance's lock, so concurrent commands on one
instance run one after the other. Whatever a describe reads is first made true: an
instance whose supervisor is gone (killed, crashed, the host rebooted) is recorded stopped
with the reason, and any QEMU of it still alive is killed.
"""
