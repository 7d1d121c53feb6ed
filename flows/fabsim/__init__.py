"""The fab simulator: contract-true synthetic fabs with planted, known truth.

config.py      `FabConfig`: every option of a simulated fab in one object
catalogue.py   equipment classes, layers, inline parameters, products
route.py       the route drawn from the catalogue
fab.py         lots, wafers, planted sites, true yield logits
equipment.py   small real tool/chamber differences, correlated dispatch, planted true losses
tables.py      the contract tables as Arrow rows
drops.py       writing them as drops, split by when data become known
stdf_writer.py sort_die as STDF V4 files, as testers write them (`FabConfig(stdf=True)`)
die_model.py   the die model's sizes (`DieModel`: D0, alpha, signature strengths) and its bins
dies.py        every sorted wafer by die: random defects, edge-ring and centre-spot chambers,
               a fail bin per mechanism (`FabConfig(dies=True)`, `yieldrank simulate --dies`)
truth.py       what was planted (`truth.json`)
simulation.py  `simulate_fab`: all of it
"""
