"""Reports built only from result files: the paper table, the qualitative figure, an HTML page.

    python -m vaes4rs.report {table,figure,html,all} [--results DIR] [--protocol NAME] [--compare CSV]

Each command reads every job under the results root, keeps the newest result per
(model, dataset, protocol) and writes its files into that root.
"""
