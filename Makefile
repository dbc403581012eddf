# D2 monorepo. `make test` works from a bare machine: it installs uv with pip when
# missing and uses the machine's own Python (no interpreter downloads).
export UV_PYTHON_DOWNLOADS := never
export PATH := $(HOME)/.local/bin:$(PATH)

UV ?= uv
RUN = $(UV) run --frozen --all-packages

.PHONY: help uv sync demo demo-cloud test lint format bench bench-peers bench-server bench-gateway docs dist

help:
	@echo "make demo   - a scripted agent as three users: each call allowed or denied, and why"
	@echo "make demo-cloud - the quickstart in cloud mode against a local d2-server"
	@echo "make test   - install everything (uv included) and run the whole suite"
	@echo "make lint   - ruff check, ruff format --check, mypy --strict on packages/"
	@echo "make bench  - guard overhead, scaling, compile time and cold start"
	@echo "make bench-server - d2-server requests/s on SQLite and PostgreSQL: poll 304/200 and ingest vs a bare route (needs ab)"
	@echo "make bench-gateway - latency a tools/call gains through d2-gateway vs straight to the upstream (p50, p99)"
	@echo "make bench-peers - D2 vs casbin and cedarpy on the same RBAC decisions (throwaway venv)"
	@echo "make docs   - build the documentation site into ./site (mkdocs --strict)"
	@echo "make dist   - build every wheel and sdist into ./dist"

uv:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

sync: uv
	$(UV) sync --all-packages --frozen

demo: sync
	$(RUN) python examples/demo_agent.py
	@echo; echo "== guardrails: an agent stopped from exfiltrating data =="; echo
	$(RUN) python examples/exfiltration.py
	@echo; echo "== guardrails: CRM output filtered per role =="; echo
	$(RUN) python examples/crm_output.py
	@echo; echo "== human control: large refunds wait for a finance lead =="; echo
	$(RUN) python examples/approvals/refund_agent.py

demo-cloud: sync
	$(RUN) python examples/cloud_demo.py

test: sync
	$(RUN) pytest -q

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy $(wildcard packages/*/src)

format: sync
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: sync
	$(RUN) python benchmarks/run.py

# The peers (casbin, cedarpy) go into a throwaway venv under .bench/peers, never into
# the project's; the run writes its tables into docs/performance.md.
bench-peers: sync
	$(RUN) python benchmarks/peers.py

# The upstream is a small echo MCP server over stdio; prints a markdown table.
bench-gateway: sync
	$(RUN) python benchmarks/bench_gateway.py

# ApacheBench (`ab`, Debian package apache2-utils) is the load generator: installed
# with apt-get when missing and run as root, else the target stops and says so.
# The run writes its table into docs/performance.md.
bench-server: sync
	@command -v ab >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y apache2-utils; } \
		|| { echo "bench-server needs ApacheBench: apt-get install -y apache2-utils" >&2; exit 2; }
	$(RUN) python benchmarks/server_bench.py --write-docs
	$(RUN) python benchmarks/server_bench.py --database postgresql --write-docs

# NO_MKDOCS_2_WARNING: mute mkdocs-material's banner about MkDocs 2.0 (not a warning
# of this build; --strict still fails on every real one).
docs: sync
	NO_MKDOCS_2_WARNING=1 $(RUN) mkdocs build --strict --site-dir site

# Every distribution's wheel and sdist, one version for all (VERSION).
dist: uv
	rm -rf dist
	$(UV) build --all-packages --out-dir dist
