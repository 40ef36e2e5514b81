"""The instance metadata service: the document, the protocol core and the host server."""

from pathlib import Path

# The protocol core also runs stand-alone (`python3 -I -S imds_cgi.py DOC`) in an instance
# directory or beside a runner, under the name it has always had there.
PROTOCOL_SCRIPT = Path(__file__).with_name("protocol.py")
SCRIPT_NAME = "imds_cgi.py"
