"""Names the router's programs on the server and its deploy share: paths, file names, environment.

Stdlib only and no imports at all: the deploy imports it as `hostfiles.router_names`; on the server
it is /opt/llm-router/libexec/llm_router_names.py, beside the launcher, and the router's programs
import it from there (see hostfiles/__init__.py for how each program finds it).
"""

ETC_DIR = "/etc/llm-router"
INSTALL_ROOT = "/opt/llm-router"
LIBEXEC_DIR_NAME = "libexec"
SERVICE_USER = "llm-router"
UNIT_NAME = "llm-router.service"
# The trial run of a new venv/config/unit during an activation, on a loopback port.
CHECK_UNIT_NAME = "llm-router-check.service"
STATE_DIR_NAME = "llm-router"  # StateDirectory= / CacheDirectory= name

# In ETC_DIR. LiteLLM imports the auth hook from its config's directory, by module name.
CONFIG_FILE_NAME = "config.yaml"
AUTH_HOOK_MODULE = "llm_router_auth"
KEY_HASHES_FILE_NAME = "client-keys.json"
MASTER_KEY_FILE_NAME = "master-key"
KEY_HASHES_FILE = f"{ETC_DIR}/{KEY_HASHES_FILE_NAME}"

# In INSTALL_ROOT/LIBEXEC_DIR_NAME. NAMES_MODULE is this module's name there.
NAMES_MODULE = "llm_router_names"
LAUNCHER_FILE_NAME = "llm_router_launch.py"
SPEEDUPS_FILE_NAME = "llm_router_speedups.py"
CHECK_CONFIG_FILE_NAME = "check-config.py"
ACTIVATE_FILE_NAME = "activate"

# The master key: a systemd credential (LoadCredential=NAME:PATH) the launcher puts in this variable,
# which the config names as `os.environ/...` and the auth hook compares with.
MASTER_KEY_CREDENTIAL = "master-key"
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
# Where the auth hook finds the client key hashes (set in the unit; KEY_HASHES_FILE without it).
KEY_HASHES_FILE_ENV = "LLM_ROUTER_KEY_HASHES_FILE"
