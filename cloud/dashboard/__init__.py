"""`cloud dashboard`: a page on loopback with every device, its latest reading, its age,
status and health, a live chart per sensor and the active alerts.

`fleet_view` keeps what the live stream said of each device, and `live` that with the state
of the broker, the table and the alerts; `hub` fans it out to the open pages; `history`
reads a range of readings from the table; `app` is the Starlette app over them; `server`
runs it under uvicorn beside the live stream; `assets` installs the charting library
(uPlot) from its lock file. The page itself is `static/`.
"""
