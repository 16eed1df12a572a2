package history

import "database/sql"

// sqlOpenRaw opens path without any check, as a handle that predates a
// corruption would be.
func sqlOpenRaw(path string) (*sql.DB, error) { return sql.Open("sqlite", "file:"+path) }
