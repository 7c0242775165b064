"""The feedback store: tables, data access, migrations, the feedback API and dataset export."""
