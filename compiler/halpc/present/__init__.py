"""What people read: text tables, self-contained HTML reports, chart geometry, units."""
