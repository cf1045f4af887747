#!/usr/bin/env bash
# Makes the Kubernetes Secret `metaocl-secrets` that postgres.yaml, s3.yaml, mlflow.yaml and the Ray
# pods (raycluster.yaml, rayjob.yaml) read, once: random values generated here, on your machine,
# sent straight to the cluster (never written to the repository). An existing Secret is left as it is.
#
#   docker/kuberay/secrets.sh [kubectl flags, e.g. -n NAMESPACE]
#
# Keys: ray-token, mlflow-admin-password, mlflow-flask-secret, postgres-password, s3-access-key,
# s3-secret-key, s3.json (SeaweedFS's S3 identities). Rotation: docs/deployment.md.
set -euo pipefail
NAME=metaocl-secrets
if kubectl get secret "$NAME" "$@" > /dev/null 2>&1; then
    echo "secrets.sh: Secret $NAME exists; left as it is" >&2
    exit 0
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import json, pathlib, secrets, sys
d = pathlib.Path(sys.argv[1])
values = {"ray-token": 32, "mlflow-admin-password": 16, "mlflow-flask-secret": 32, "postgres-password": 16,
          "s3-access-key": 8, "s3-secret-key": 24}
for name, n in values.items():
    (d / name).write_text(secrets.token_hex(n))
ak, sk = (d / "s3-access-key").read_text(), (d / "s3-secret-key").read_text()
(d / "s3.json").write_text(json.dumps({"identities": [{"name": "metaocl",
    "credentials": [{"accessKey": ak, "secretKey": sk}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
PY
kubectl create secret generic "$NAME" --from-file="$dir" "$@" > /dev/null
echo "secrets.sh: made Secret $NAME" >&2
