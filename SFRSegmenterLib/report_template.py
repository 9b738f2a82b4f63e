"""The run report's page (a Jinja2 template, rendered with autoescape by :func:`report.render`)."""

#: The page.  Every value is escaped by Jinja2's autoescape (case names, class names, messages and
#: paths come from the user's files), so no table can forget; pictures are base64 PNG strings.
TEMPLATE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>SFR run {{ run_name }}</title>
<style>{{ css }}</style></head><body>
{%- macro img(b64, alt, width=None) -%}
<img alt="{{ alt }}" src="data:image/png;base64,{{ b64 }}"{% if width %} width="{{ width }}"{% endif %}>
{%- endmacro %}
{%- macro table(head, rows) -%}
<table><thead><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in rows %}<tr>{% for cell in row.cells %}<td>{% if loop.index0 in row.bold %}<b>{{ cell }}</b>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>{% endfor -%}
</tbody></table>
{%- endmacro %}
<h1>SFR Segmenter run {{ run_name }}</h1>
<p class=meta>Project <b>{{ project_name }}</b> ({{ n_labeled }} labeled, {{ n_unlabeled }} unlabeled,
{{ n_validation }} validation) &middot; {{ mode }}, {{ resolved_rounds }} round(s), tau {{ tau }} &middot; state
<b>{{ state }}</b> &middot; compute {{ "%.1f"|format(compute_min) }} min &middot; {{ n_trusted }}/{{ n_cases }} cases trusted</p>
{% if pseudo_mean %}<p class=big>Pseudo-labels vs hidden ground truth: mean Dice <b>{{ pseudo_mean.dice }} %</b>, 95HD {{ pseudo_mean.hd95 }} mm</p>{% endif %}
<h2>Cases to review</h2><p>Lowest estimated quality first. <i>Flagged slices</i> are the slices (index along the volume's
first array axis, as in review.json) with the largest expected number of wrong voxels near the structure; each
with its mean confidence there.</p>
{{ table(["case", "estimated Dice %", "confidence", "trusted", "flagged slices", "low-conf. voxels", "Dice %"], review_rows) }}
<p>{{ estimate_note }}</p>
{% if label_next_rows %}<h2>What to label next</h2><p>Unlabeled cases ranked by how much labeling them is expected to
help (review.json <i>label_next</i>): lowest estimated quality first, alike cases spread apart.</p>
{{ table(["rank", "case", "why"], label_next_rows) }}{% endif %}
{% if mosaic %}<h2>What SAM sees: the stitched mosaic of {{ mosaic.name }}</h2>
<p>All slices of the labeled volume, in order, row by row on the backbone's canvas; label outlined.</p>
{{ img(mosaic.b64, "stitched mosaic", mosaic.width) }}{% endif %}
<h2>Flagged slices</h2><p>Left of each pair: image with the pseudo-label outline (colour per class) and the ground
truth in yellow when it is known. Right: confidence (black = {{ "%.0f"|format(chance_pct) }} % = chance, yellow =
100 %), low-confidence voxels outlined in magenta. Up to {{ max_cases }} least confident cases.</p>
{% for p in case_pictures %}
{%- if p.error %}<p>{{ p.name }}: cannot show ({{ p.error }})</p>
{%- else %}<h3>{{ p.name }} &middot; confidence {{ p.confidence }} % &middot; slices {{ p.slices }}</h3>{{ img(p.b64, p.name) }}{% endif %}
{% endfor %}
{% if slice_fig %}<h2>Per-slice confidence</h2><p>Dots: flagged slices.</p>{{ img(slice_fig, "per-slice confidence") }}{% endif %}
{% if loss_fig %}<h2>Loss curves</h2>{{ img(loss_fig, "loss curves") }}{% endif %}
{% if balance_fig %}<h2>Class balance during training</h2><p>Share of the training batch's voxels predicted as
each class (solid) and the targets' share (dashed, mean). A class predicted nowhere for a long stretch has
collapsed.</p>{{ img(balance_fig, "class balance") }}{% endif %}
<h2>Budget and time</h2><p>{{ budget_line }}</p>{% if estimate_line %}<p>{{ estimate_line }}</p>{% endif %}
{% if time_rows %}{{ table(["stage", "seconds", "estimated s"], time_rows) }}{% endif %}
{% if absent_rows %}<p>Iterations in which a class present in the targets was predicted nowhere (bold: over
10 % of the stage).</p>{{ table(["stage", "iterations", "per class", "worst class"], absent_rows) }}{% endif %}
{% if warnings %}<h2>Warnings</h2><ul>{% for w in warnings %}<li><b>{{ w }}</b></li>{% endfor %}</ul>{% endif %}
{% if stage_fig %}<h2>Time per stage</h2>{{ img(stage_fig, "stage times") }}
{{ table(["stage", "status", "seconds", "reused from"], stage_rows) }}{% endif %}
{% if round_rows %}<h2>SFR+ rounds</h2>
<p>Trust rule: {{ trust_rule }}.</p>
{{ table(["round", "trusted", "mean estimated Dice %", "mean conf. %", "structure / labeled", "V-Net Dice %", "SAM Dice %",
          "moved to trusted", "moved out", "kept or dropped"], round_rows) }}
<p>Results shown and saved: round {{ final_round }}.</p>{% endif %}
{% for m in metric_tables %}<h2>{{ m.title }}</h2>
{{ table(["case", "class", "Dice %", "Jaccard %", "95HD mm", "ASD mm"], m.rows) }}{% endfor %}
<h2>Configuration</h2><pre>{{ config_json }}</pre>
</body></html>
"""

CSS = ("body{font-family:sans-serif;max-width:1100px;margin:20px auto;color:#222}"
       "table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;"
       "padding:3px 7px;text-align:left}th{background:#eef}.meta{color:#555}.big{font-size:18px}"
       "h3{font-size:14px;margin:14px 0 4px}pre{font-size:11px;background:#f6f6f6;padding:8px}")
