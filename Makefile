# vaes4rs: every target is a thin wrapper over a python -m command (see README).
PYTHON ?= python
RESULTS ?= outputs
PROTOCOL ?=
PROTOCOL_ARG := $(if $(PROTOCOL),--protocol $(PROTOCOL),)
COMPARE ?=
COMPARE_ARG := $(if $(COMPARE),--compare $(COMPARE),)

.PHONY: install test lint format paper-table figure report flops-table

install:  ## the package, its dependencies and the dev tools (torch<=2.14.1: pip reuses a local wheel)
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the whole suite (needs ../shared for the real-weights tests; they skip without it)
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .

paper-table:  ## paper_table.{md,tex,csv} in RESULTS (PROTOCOL=standard, COMPARE=experiments/paper/published.csv)
	$(PYTHON) -m vaes4rs.report table --results $(RESULTS) $(PROTOCOL_ARG) $(COMPARE_ARG)

figure:  ## figure.{png,pdf} in RESULTS: ground truth and every model's reconstruction, zooms, |error|
	$(PYTHON) -m vaes4rs.report figure --results $(RESULTS) $(PROTOCOL_ARG)

report:  ## report.html in RESULTS: table, per-class charts, figure; self-contained, no network
	$(PYTHON) -m vaes4rs.report html --results $(RESULTS) $(PROTOCOL_ARG) $(COMPARE_ARG)

flops-table:  ## outputs/profile/flops_table.{md,csv}: GFLOPs, params, latent shapes of the seven study VAEs (no weights)
	$(PYTHON) -m vaes4rs.profiler profile.table=true
