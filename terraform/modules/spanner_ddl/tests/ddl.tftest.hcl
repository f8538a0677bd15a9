variables {
  ddl_file = "../../../config/spanner.ddl"
}

run "reads_the_one_schema" {
  command = plan

  assert {
    condition     = length(output.statements) >= 5
    error_message = "config/spanner.ddl yields its statements"
  }
  assert {
    condition     = startswith(output.statements[0], "CREATE TABLE Threads (")
    error_message = "the first statement is the Threads table"
  }
  assert {
    condition     = alltrue([for s in output.statements : !strcontains(s, "--") && !endswith(s, ";")])
    error_message = "comments and terminators are stripped"
  }
  assert {
    condition     = alltrue([for s in output.statements : startswith(s, "CREATE ") || startswith(s, "ALTER ")])
    error_message = "every statement is DDL"
  }
}

run "missing_file_is_refused" {
  command = plan
  variables {
    ddl_file = "no-such.ddl"
  }
  expect_failures = [var.ddl_file]
}
