"""Alerts: rules over the fleet's live stream (`cloud alerts watch`) and over the table's
past readings (`cloud alerts test`).

`rules` reads and checks config/alerts.toml; `engine` evaluates the rules, purely: events
and a clock in, fired and cleared notifications out; `state` keeps what the engine knows
(active episodes, each sensor's last reading) across restarts; `notify` sends the
notifications (stdout, a webhook, SNS); `watch` is the live loop and `replay` the past one.
The dashboard reads the active alerts with `state.active_alerts`.
"""
