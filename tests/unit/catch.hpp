// Catch2 2 (Debian 12, catch2/catch.hpp) and Catch2 3 (Debian 13,
// catch2/catch_all.hpp) both: the tests use only what the two share.
#pragma once
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
