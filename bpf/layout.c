// SPDX-License-Identifier: GPL-2.0
/*
 * Never loaded. The steering object's BTF describes only the types its maps and program use,
 * so the values of baton.h's enums never reach it. This object gives each enum a variable, so
 * that its BTF carries every type of the header, enums included. The unit test of the
 * TypeScript mirror (test/unit/agent/routing-table-layout.test.ts) compares that mirror with
 * this BTF and with the steering object's, rather than with numbers restated by hand.
 */
#include "baton.h"

enum baton_route_state baton_layout_route_state;
enum baton_stat baton_layout_stat;

char LICENSE[] SEC("license") = "GPL";
