# The `triton` service of the cpu stack: the embedded Triton 2.51 of nvidia-pytriton, started by
# the project's launcher (`trtserve_server.cli serve`) bound to all interfaces of the container,
# serving /models/cpu (compose mounts model_repository/ read-only on /models). Runs as the
# unprivileged user `trtserve`. Pins: deploy/requirements/serve-cpu.txt.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin trtserve
# WHEELS_URL: the host's wheelhouse of exactly these pins (deploy/offline/wheelhouse.sh, served
# over HTTP: it never enters the context or a layer); nothing is downloaded then. Else PyPI.
ARG WHEELS_URL=
COPY deploy/requirements/serve-cpu.txt /tmp/requirements.txt
RUN if [ -n "$WHEELS_URL" ]; then h="${WHEELS_URL#*://}"; src="--no-index --find-links $WHEELS_URL --trusted-host ${h%%/*}"; \
    else src=""; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $src -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/trtserve/serve:/opt/trtserve/client:/opt/trtserve/contract \
    PYTHONDONTWRITEBYTECODE=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/tmp
COPY serve/trtserve_server/ /opt/trtserve/serve/trtserve_server/
COPY client/trtserve_client/ /opt/trtserve/client/trtserve_client/
COPY contract/trtserve_contract/ /opt/trtserve/contract/trtserve_contract/
COPY deploy/healthcheck.py /opt/trtserve/
# The Python-backend stub for this Python goes beside the backend now, as root. The launcher
# checks it again at every start and sets the execute bits, which only the files' owner may do:
# the two executables belong to `trtserve`, the rest of the venv to root.
RUN python3 -c "import os; from trtserve_server.embedded import TritonInstall; \
t = TritonInstall.locate(); t.prepare_python_backend(); \
[os.chown(p, 10001, 10001) for p in (t.binary, t.backends / 'python' / 'triton_python_backend_stub')]"
USER trtserve
EXPOSE 8000 8001 8002
# Bound to every interface of the container: the published ports arrive on its own interface
# (compose publishes them on the host's 127.0.0.1 unless BIND_ADDRESS says otherwise).
CMD ["python3", "-m", "trtserve_server.cli", "serve", "--host", "0.0.0.0", "--model-repository", "/models/cpu", \
     "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]
