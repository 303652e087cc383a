"""Where media is made: one ``Provider`` interface, a sandbox and fal.ai."""
