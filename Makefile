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

MUTATION_DIR ?= outputs/mutation
MUTANTS ?=  # optional mutant-name globs, e.g. MUTANTS='vaes4rs.metrics.pixel.*'

.PHONY: mutation
mutation:  ## mutmut on metrics/, adapter.py, families.py and report/table.py with their fast tests, in a fresh copy under MUTATION_DIR (slow: see README)
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)
	git ls-files -co --exclude-standard -- vaes4rs tests conf experiments/paper pyproject.toml | tar -cf - -T - | tar -xf - -C $(MUTATION_DIR)
	cd $(MUTATION_DIR) && OMP_NUM_THREADS=1 $(PYTHON) -m mutmut run --max-children 2 $(MUTANTS) > mutmut-run.log 2>&1; \
		$(PYTHON) -m mutmut results --all true > results.txt; \
		awk '{split($$1, p, "."); m = p[1] "." p[2] "." p[3]; $$1 = ""; n[m ":" $$0]++} END {for (k in n) print k ": " n[k]}' results.txt | sort; \
		grep -E ": (survived|no tests)$$" results.txt

.PHONY: rd
rd:  ## rd.csv, bd_rate.csv, rd_table.md, rd.png/pdf in RESULTS from the `python -m vaes4rs.rd` jobs under it
	$(PYTHON) -m vaes4rs.storage.report --results $(RESULTS)
