"""A local HTTP emulator of the Azure AI Foundry REST subset the SDKs call (new agents and classic agents).

`server.Emulator` starts it; `state.EmulatorState` is what tests script and inspect. See server.py for auth/TLS.
"""
