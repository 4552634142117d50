from rad_megatron.cli import entry

if __name__ == "__main__":  # guard: dist_checkpointing spawns a Manager that re-imports __main__
    raise SystemExit(entry())
