# The `loadtest` profile: `python -m loadtest.run` (Locust headless, summary, SLO gate) with the
# project's load-test and client code mounted from the checkout. Pins: deploy/requirements/locust.txt.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin trtserve
# WHEELS_URL: the host's wheelhouse of exactly these pins (deploy/offline/wheelhouse.sh); else PyPI.
ARG WHEELS_URL=
COPY deploy/requirements/locust.txt /tmp/requirements.txt
RUN if [ -n "$WHEELS_URL" ]; then h="${WHEELS_URL#*://}"; src="--no-index --find-links $WHEELS_URL --trusted-host ${h%%/*}"; \
    else src=""; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check $src -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/workspace/trtserve:/workspace/trtserve/client:/workspace/trtserve/serve:/workspace/trtserve/contract \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /workspace/trtserve
# Reports go to the mounted results/ folder, so the service runs as the checkout's owner
# (compose: user ${TRTSERVE_USER}); `trtserve` is for runs without a mount.
USER trtserve
CMD ["python3", "-m", "loadtest.run", "--help"]
