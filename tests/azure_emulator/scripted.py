"""Scripted models for walk-throughs: what a real agent would plausibly write for a given request."""

from __future__ import annotations

from .state import Turn, default_model

NIFTY_CHART_CODE = """\
import pandas as pd
import matplotlib.pyplot as plt

df = pd.read_csv('/mnt/data/{name}')
transport = df[df['sector'] == 'TRANSPORTATION'].sort_values('operating_profit', ascending=False)
print(transport[['name', 'operating_profit']].to_string(index=False))

fig, ax = plt.subplots(figsize=(10, 5))
ax.bar(transport['name'], transport['operating_profit'], color='steelblue')
ax.set_title('Operating profit, TRANSPORTATION sector (Nifty 500, latest quarter)')
ax.set_ylabel('Operating profit (INR crore)')
ax.tick_params(axis='x', labelrotation=60)
for label in ax.get_xticklabels():
    label.set_horizontalalignment('right')
fig.tight_layout()
fig.savefig('/mnt/data/transportation_operating_profit.png', dpi=100)
"""


def nifty_chart_model(message: str, file_names: list[str]) -> Turn:
    """Answers "bar chart of operating profit in the TRANSPORTATION sector" over the Nifty 500 CSV; otherwise
    behaves like the default model."""
    wanted = "operating profit" in message.lower() and "transportation" in message.lower()
    csv = next((n for n in file_names if n.endswith(".csv")), None)
    if not wanted or csv is None:
        return default_model(message, file_names)
    return Turn(
        NIFTY_CHART_CODE.format(name=csv),
        "Here is the operating profit of the TRANSPORTATION companies in the Nifty 500, largest first:\n{stdout}",
    )
