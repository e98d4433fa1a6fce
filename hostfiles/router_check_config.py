"""check-config.py CONFIG: is this LiteLLM proxy config fit to replace the running one?

Managed by llm-router-deploy (hostfiles/router_check_config.py). Exit 0, or 1 with one line per problem.
The activation script runs it with the NEW venv's python (PyYAML comes with litellm).
"""
import os
import sys
import urllib.error
import urllib.request

import yaml


def problems(path):
    found = []
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        return [f"{path}: not loadable YAML: {error}"]
    if not isinstance(config, dict):
        return [f"{path}: the document is not a mapping"]
    models = config.get("model_list")
    if not isinstance(models, list) or not models:
        found.append("model_list is missing or empty")
        models = []
    bases = set()
    for index, entry in enumerate(models):
        where = f"model_list[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            found.append(f"{where}: needs a model_name")
            continue
        params = entry.get("litellm_params")
        if not isinstance(params, dict) or not isinstance(params.get("model"), str) or "/" not in params["model"]:
            found.append(f"{where} ({entry['model_name']}): litellm_params.model must be '<provider>/<model>'")
            continue
        if isinstance(params.get("api_base"), str):
            bases.add(params["api_base"])
    for base in sorted(bases):
        try:
            urllib.request.urlopen(base, timeout=5).close()
        except urllib.error.HTTPError:
            pass  # it answered: reachable
        except (urllib.error.URLError, OSError) as error:
            found.append(f"api_base {base} is not reachable: {getattr(error, 'reason', error)}")
    general = config.get("general_settings") or {}
    if not isinstance(general, dict):
        found.append("general_settings is not a mapping")
        general = {}
    master = general.get("master_key")
    if isinstance(master, str) and not master.startswith("os.environ/"):
        found.append("general_settings.master_key holds a literal key; it must come from the environment")
    auth = general.get("custom_auth")
    if auth:
        module = str(auth).rsplit(".", 1)[0]
        source = os.path.join(os.path.dirname(os.path.abspath(path)), module.replace(".", "/") + ".py")
        try:
            with open(source) as handle:
                compile(handle.read(), source, "exec")
        except (OSError, SyntaxError) as error:
            found.append(f"custom_auth {auth}: {error}")
    return found


if __name__ == "__main__":
    found = problems(sys.argv[1])
    for problem in found:
        print(f"check-config: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
