# ci-mcp over stdio in a container: the cross-platform way to run the local backend sandboxed.
#   docker build -t ci-mcp .
#   docker run -i --rm -v "$PWD:/data" ci-mcp                  # what an MCP client launches (stdio)
#   docker run --rm -v "$PWD:/data" ci-mcp doctor              # what works inside this container
# bubblewrap needs to mount a /proc for each kernel: podman run --security-opt unmask=ALL (docker: systempaths=unconfined);
# without it ci-mcp runs kernels unsandboxed inside the container and says so. README "Docker" has the details.
# /data is your data folder (upload_file reads and save_to writes there); /var/lib/ci-mcp keeps ci-mcp's files.
FROM python:3.11-slim-bookworm

# bubblewrap sandboxes each kernel (no network, read-only system) where the container may create namespaces;
# without that, ci-mcp says so (doctor, log, first result) and runs kernels with resource limits only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md LICENSE NOTICE /src/ci-mcp/
COPY src /src/ci-mcp/src
RUN pip install --no-cache-dir --compile /src/ci-mcp && rm -rf /src/ci-mcp

# Not root: a root server without a working sandbox refuses to start kernels (CI_MCP_SANDBOX=auto).
RUN useradd --create-home --uid 10001 ci \
    && mkdir -p /data /var/lib/ci-mcp && chown ci:ci /data /var/lib/ci-mcp
USER ci
ENV CI_MCP_DATA_DIR=/var/lib/ci-mcp \
    CI_MCP_ALLOWED_DIRS=/data \
    PYTHONUNBUFFERED=1
VOLUME ["/data", "/var/lib/ci-mcp"]
WORKDIR /data

ENTRYPOINT ["ci-mcp"]
